//! Pod volumes on the node, laid out as the kubelet does under
//! `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`: emptyDir (a directory, or tmpfs
//! for `medium: Memory`), hostPath (with its type checks), and configMap, secret, downwardAPI
//! and projected volumes written atomically (a `..data` symlink swapped to a fresh timestamped
//! directory), so running containers see updates in place. Which files a volume holds is
//! decided by the pure [`projection`]; only [`write_atomically`] and the mounts touch the disk.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};
use kelson_common::quantity;

/// A volume that could not be set up; the pod waits in ContainerCreating.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A ConfigMap or Secret is missing.
    #[error("{kind} \"{name}\" not found")]
    Missing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A key the volume's items name is missing.
    #[error("configmap or secret {name} has no key {key}")]
    MissingKey {
        /// Object name.
        name: String,
        /// The key.
        key: String,
    },
    /// A path in `items` escapes the volume.
    #[error("invalid path {0}: must be relative and may not contain '..'")]
    Path(String),
    /// A hostPath of the wrong type.
    #[error("hostPath type check failed: {path} is not a {expected}")]
    HostPathType {
        /// The path.
        path: String,
        /// `directory`, `file`, `socket`, ...
        expected: &'static str,
    },
    /// A volume kind the agent does not support.
    #[error("unsupported volume type of volume {0}")]
    Unsupported(String),
    /// A projected service-account token could not be issued.
    #[error("failed to fetch the service account token: {0}")]
    Token(String),
    /// A persistentVolumeClaim that is not bound to a usable volume.
    #[error("{0}")]
    Claim(String),
    /// A volumeMount names no volume.
    #[error("volume {0} not found in the pod")]
    NoVolume(String),
    /// Disk or mount failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

/// The ConfigMaps and Secrets a pod's volumes refer to, fetched by the worker.
#[derive(Clone, Debug, Default)]
pub struct VolumeSources {
    /// ConfigMaps by name.
    pub config_maps: BTreeMap<String, ConfigMap>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, Secret>,
}

/// A file a volume holds: relative path, content and mode.
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// The names of the ConfigMaps and Secrets the pod's volumes use.
#[must_use]
pub fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(cm) = &volume.config_map {
            config_maps.push(cm.name.clone());
        }
        if let Some(secret) = &volume.secret {
            secrets.extend(secret.secret_name.clone());
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(cm) = &source.config_map {
                config_maps.push(cm.name.clone());
            }
            if let Some(secret) = &source.secret {
                secrets.push(secret.name.clone());
            }
        }
    }
    config_maps.sort();
    config_maps.dedup();
    secrets.sort();
    secrets.dedup();
    (config_maps, secrets)
}

fn check_path(path: &str) -> Result<(), VolumeError> {
    let relative = Path::new(path);
    let valid = !path.is_empty()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !path.starts_with("..");
    if valid {
        Ok(())
    } else {
        Err(VolumeError::Path(path.to_owned()))
    }
}

fn key_files(
    data: &BTreeMap<String, Vec<u8>>,
    object: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    optional: bool,
    files: &mut Files,
) -> Result<(), VolumeError> {
    match items {
        None => {
            for (key, value) in data {
                files.insert(key.clone(), (value.clone(), default_mode));
            }
        }
        Some(items) => {
            for item in items {
                check_path(&item.path)?;
                match data.get(&item.key) {
                    Some(value) => {
                        let mode = item.mode.map_or(default_mode, mode_bits);
                        files.insert(item.path.clone(), (value.clone(), mode));
                    }
                    None if optional => {}
                    None => {
                        return Err(VolumeError::MissingKey {
                            name: object.to_owned(),
                            key: item.key.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

fn mode_bits(mode: i32) -> u32 {
    u32::try_from(mode).unwrap_or(0o644) & 0o777
}

fn config_map_bytes(config_map: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = config_map
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in config_map.binary_data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    data
}

fn secret_bytes(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

fn format_map(map: Option<&BTreeMap<String, String>>) -> Vec<u8> {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    files: &mut Files,
) -> Result<(), VolumeError> {
    let metadata = &pod.metadata;
    for item in items {
        check_path(&item.path)?;
        let mode = item.mode.map_or(default_mode, mode_bits);
        let content = if let Some(field) = &item.field_ref {
            match field.field_path.as_str() {
                "metadata.name" => metadata.name.clone().unwrap_or_default().into_bytes(),
                "metadata.namespace" => metadata.namespace.clone().unwrap_or_default().into_bytes(),
                "metadata.uid" => metadata.uid.clone().unwrap_or_default().into_bytes(),
                "metadata.labels" => format_map(metadata.labels.as_ref()),
                "metadata.annotations" => format_map(metadata.annotations.as_ref()),
                other => {
                    let key = other
                        .strip_prefix("metadata.labels['")
                        .map(|k| (k, metadata.labels.as_ref()))
                        .or_else(|| {
                            other
                                .strip_prefix("metadata.annotations['")
                                .map(|k| (k, metadata.annotations.as_ref()))
                        });
                    match key {
                        Some((key, map)) => map
                            .and_then(|m| m.get(key.trim_end_matches("']")).cloned())
                            .unwrap_or_default()
                            .into_bytes(),
                        None => return Err(VolumeError::Unsupported(other.to_owned())),
                    }
                }
            }
        } else if let Some(resource) = &item.resource_field_ref {
            let container = pod.spec.as_ref().and_then(|s| {
                s.containers
                    .iter()
                    .find(|c| Some(&c.name) == resource.container_name.as_ref())
            });
            resource_text(container, &resource.resource, resource.divisor.as_ref()).into_bytes()
        } else {
            continue;
        };
        files.insert(item.path.clone(), (content, mode));
    }
    Ok(())
}

fn resource_text(
    container: Option<&Container>,
    resource: &str,
    divisor: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> String {
    let resources = container
        .and_then(|c| c.resources.clone())
        .unwrap_or_default();
    let (map, name) = match resource.split_once('.') {
        Some(("limits", name)) => (resources.limits.unwrap_or_default(), name),
        Some(("requests", name)) => (resources.requests.unwrap_or_default(), name),
        _ => return String::new(),
    };
    let is_cpu = name == "cpu";
    let value = map.get(name).map_or(0, |q| {
        if is_cpu {
            quantity::cpu_millis(q)
        } else {
            quantity::units(q)
        }
    });
    let divisor = divisor.map_or(if is_cpu { 1000 } else { 1 }, |d| {
        if is_cpu {
            quantity::cpu_millis(d).max(1)
        } else {
            quantity::units(d).max(1)
        }
    });
    ((value + divisor - 1) / divisor).to_string()
}

/// The files of one ConfigMap or Secret (`data` is `None` when the object is missing).
fn source_files(
    data: Option<BTreeMap<String, Vec<u8>>>,
    kind: &'static str,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    optional: Option<bool>,
    files: &mut Files,
) -> Result<(), VolumeError> {
    let optional = optional.unwrap_or(false);
    match data {
        Some(data) => key_files(&data, name, items, mode, optional, files),
        None if optional => Ok(()),
        None => Err(VolumeError::Missing {
            kind,
            name: name.to_owned(),
        }),
    }
}

/// The files of a configMap, secret, downwardAPI or projected volume; `None` for other kinds.
/// `token` supplies the service-account token of a projected `serviceAccountToken` source.
///
/// # Errors
/// When a referenced object or key is missing and not optional, or a path is invalid.
pub fn projection(
    pod: &Pod,
    volume: &Volume,
    sources: &VolumeSources,
    token: Option<&str>,
) -> Result<Option<Files>, VolumeError> {
    let mut files = Files::new();
    let config_map = |name: &str, items, optional, mode, files: &mut Files| {
        let data = sources.config_maps.get(name).map(config_map_bytes);
        source_files(data, "configmap", name, items, mode, optional, files)
    };
    let secret = |name: &str, items, optional, mode, files: &mut Files| {
        let data = sources.secrets.get(name).map(secret_bytes);
        source_files(data, "secret", name, items, mode, optional, files)
    };
    if let Some(cm) = &volume.config_map {
        let mode = cm.default_mode.map_or(0o644, mode_bits);
        config_map(&cm.name, cm.items.as_ref(), cm.optional, mode, &mut files)?;
        return Ok(Some(files));
    }
    if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let mode = source.default_mode.map_or(0o644, mode_bits);
        secret(
            &name,
            source.items.as_ref(),
            source.optional,
            mode,
            &mut files,
        )?;
        return Ok(Some(files));
    }
    if let Some(downward) = &volume.downward_api {
        let mode = downward.default_mode.map_or(0o644, mode_bits);
        let items = downward.items.as_deref().unwrap_or_default();
        downward_files(pod, items, mode, &mut files)?;
        return Ok(Some(files));
    }
    let Some(projected) = &volume.projected else {
        return Ok(None);
    };
    let mode = projected.default_mode.map_or(0o644, mode_bits);
    for source in projected.sources.iter().flatten() {
        if let Some(cm) = &source.config_map {
            config_map(&cm.name, cm.items.as_ref(), cm.optional, mode, &mut files)?;
        }
        if let Some(projected_secret) = &source.secret {
            let items = projected_secret.items.as_ref();
            secret(
                &projected_secret.name,
                items,
                projected_secret.optional,
                mode,
                &mut files,
            )?;
        }
        if let Some(downward) = &source.downward_api {
            downward_files(
                pod,
                downward.items.as_deref().unwrap_or_default(),
                mode,
                &mut files,
            )?;
        }
        if let Some(token_source) = &source.service_account_token {
            check_path(&token_source.path)?;
            let Some(token) = token else {
                return Err(VolumeError::Token(
                    "no token was issued for this pod".into(),
                ));
            };
            files.insert(token_source.path.clone(), (token.as_bytes().to_vec(), mode));
        }
    }
    Ok(Some(files))
}

/// Writes `files` into `directory` atomically: the content goes into a fresh `..<stamp>`
/// directory, the `..data` symlink is swapped to it, and each top-level name is a symlink
/// through `..data`. Returns whether anything changed.
///
/// # Errors
/// On disk failures.
pub fn write_atomically(directory: &Path, files: &Files) -> Result<bool, VolumeError> {
    std::fs::create_dir_all(directory).map_err(io_error(format!(
        "failed to create {}",
        directory.display()
    )))?;
    let data_link = directory.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let current = directory.join(current);
        if same_content(&current, files) {
            return Ok(false);
        }
    }
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let fresh = directory.join(&stamp);
    for (path, (content, mode)) in files {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_error(format!("failed to create {}", parent.display())))?;
        }
        std::fs::write(&target, content)
            .map_err(io_error(format!("failed to write {}", target.display())))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))
            .map_err(io_error(format!("failed to chmod {}", target.display())))?;
    }
    std::fs::create_dir_all(&fresh)
        .map_err(io_error(format!("failed to create {}", fresh.display())))?;
    let old = std::fs::read_link(&data_link).ok();
    let temporary = directory.join("..data_tmp");
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&stamp, &temporary)
        .map_err(io_error("failed to link the new data"))?;
    std::fs::rename(&temporary, &data_link).map_err(io_error("failed to swap the data link"))?;
    // top-level names point through ..data
    let mut names: Vec<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    names.dedup();
    for name in &names {
        let link = directory.join(name);
        if std::fs::read_link(&link).is_err() {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                .map_err(io_error(format!("failed to link {}", link.display())))?;
        }
    }
    // names that went away
    if let Ok(entries) = std::fs::read_dir(directory) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !names.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(directory.join(old));
    }
    Ok(true)
}

fn same_content(directory: &Path, files: &Files) -> bool {
    let mut count = 0;
    let mut stack = vec![directory.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return false;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(relative) = path.strip_prefix(directory) else {
                return false;
            };
            let Some((content, mode)) = files.get(&*relative.to_string_lossy()) else {
                return false;
            };
            let Ok(metadata) = entry.metadata() else {
                return false;
            };
            if metadata.permissions().mode() & 0o777 != *mode
                || std::fs::read(&path).ok().as_ref() != Some(content)
            {
                return false;
            }
            count += 1;
        }
    }
    count == files.len()
}

/// The directory of a pod's volume of `plugin` (e.g. `configmap`).
#[must_use]
pub fn volume_directory(pod_directory: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_directory
        .join("volumes")
        .join(format!("kubernetes.io~{plugin}"))
        .join(name)
}

fn mounted_paths() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

fn check_host_path(path: &Path, kind: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::FileTypeExt;
    let metadata = std::fs::metadata(path).ok();
    let fail = |expected| {
        Err(VolumeError::HostPathType {
            path: path.display().to_string(),
            expected,
        })
    };
    match kind {
        "DirectoryOrCreate" => {
            if metadata.is_none() {
                std::fs::create_dir_all(path)
                    .map_err(io_error(format!("failed to create {}", path.display())))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io_error(format!("failed to chmod {}", path.display())))?;
            } else if !path.is_dir() {
                return fail("directory");
            }
        }
        "Directory" if !metadata.as_ref().is_some_and(|m| m.is_dir()) => return fail("directory"),
        "FileOrCreate" => {
            if metadata.is_none() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(io_error(format!("failed to create {}", parent.display())))?;
                }
                std::fs::write(path, b"")
                    .map_err(io_error(format!("failed to create {}", path.display())))?;
            } else if !path.is_file() {
                return fail("file");
            }
        }
        "File" if !metadata.as_ref().is_some_and(|m| m.is_file()) => return fail("file"),
        "Socket" if !metadata.as_ref().is_some_and(|m| m.file_type().is_socket()) => {
            return fail("socket");
        }
        "CharDevice"
            if !metadata
                .as_ref()
                .is_some_and(|m| m.file_type().is_char_device()) =>
        {
            return fail("character device");
        }
        "BlockDevice"
            if !metadata
                .as_ref()
                .is_some_and(|m| m.file_type().is_block_device()) =>
        {
            return fail("block device");
        }
        _ => {}
    }
    Ok(())
}

/// Sets up every volume of `pod` under `pod_directory` and returns the host path of each by
/// name. Projected content is rewritten when it changed.
///
/// # Errors
/// When a volume cannot be set up (the message is the FailedMount event's).
pub fn prepare(
    pod: &Pod,
    pod_directory: &Path,
    sources: &VolumeSources,
    token: Option<&str>,
    persistent_paths: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, PathBuf>, (String, VolumeError)> {
    let mut paths = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let name = volume.name.clone();
        let fail = |error| (name.clone(), error);
        if let Some(files) = projection(pod, volume, sources, token).map_err(fail)? {
            let plugin = if volume.config_map.is_some() {
                "configmap"
            } else if volume.secret.is_some() {
                "secret"
            } else if volume.downward_api.is_some() {
                "downward-api"
            } else {
                "projected"
            };
            let directory = volume_directory(pod_directory, plugin, &name);
            write_atomically(&directory, &files).map_err(fail)?;
            paths.insert(name, directory);
        } else if let Some(empty) = &volume.empty_dir {
            let directory = volume_directory(pod_directory, "empty-dir", &name);
            std::fs::create_dir_all(&directory)
                .map_err(io_error(format!(
                    "failed to create {}",
                    directory.display()
                )))
                .map_err(fail)?;
            std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o777))
                .map_err(io_error("failed to chmod an emptyDir"))
                .map_err(fail)?;
            if empty.medium.as_deref() == Some("Memory") && !mounted_paths().contains(&directory) {
                let mut options = String::from("mode=1777");
                if let Some(limit) = &empty.size_limit {
                    options.push_str(&format!(",size={}", quantity::units(limit)));
                }
                let options = CString::new(options).expect("mount options have no NUL");
                rustix::mount::mount(
                    "tmpfs",
                    &directory,
                    "tmpfs",
                    rustix::mount::MountFlags::empty(),
                    Some(options.as_c_str()),
                )
                .map_err(|e| VolumeError::Io {
                    what: format!("failed to mount tmpfs at {}", directory.display()),
                    source: e.into(),
                })
                .map_err(fail)?;
            }
            paths.insert(name, directory);
        } else if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            check_host_path(&path, host.type_.as_deref().unwrap_or_default()).map_err(fail)?;
            paths.insert(name, path);
        } else if volume.persistent_volume_claim.is_some() {
            match persistent_paths.get(&name) {
                Some(path) => {
                    check_host_path(path, "DirectoryOrCreate").map_err(fail)?;
                    paths.insert(name, path.clone());
                }
                None => {
                    return Err(fail(VolumeError::Claim(format!(
                        "persistentvolumeclaim of volume {name} is not bound"
                    ))));
                }
            }
        } else {
            return Err(fail(VolumeError::Unsupported(name.clone())));
        }
    }
    Ok(paths)
}

/// Whether a volume is read-only by nature (projected content).
fn always_read_only(pod: &Pod, name: &str) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .find(|v| v.name == name)
        .is_some_and(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        })
}

/// The CRI mounts of `container`, from its volumeMounts and the prepared volume paths.
///
/// # Errors
/// When a volumeMount names an unknown volume or its subPath is invalid.
pub fn container_mounts(
    pod: &Pod,
    container: &Container,
    paths: &BTreeMap<String, PathBuf>,
) -> Result<Vec<cri::Mount>, VolumeError> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(base) = paths.get(&mount.name) else {
            return Err(VolumeError::NoVolume(mount.name.clone()));
        };
        let mut host_path = base.clone();
        if let Some(sub_path) = mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
            check_path(sub_path)?;
            host_path = base.join(sub_path);
            if !host_path.exists() {
                std::fs::create_dir_all(&host_path).map_err(io_error(format!(
                    "failed to create {}",
                    host_path.display()
                )))?;
            }
        }
        let propagation = match mount.mount_propagation.as_deref() {
            Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
            _ => cri::MountPropagation::PropagationPrivate,
        };
        mounts.push(cri::Mount {
            container_path: mount.mount_path.clone(),
            host_path: host_path.display().to_string(),
            readonly: mount.read_only.unwrap_or(false) || always_read_only(pod, &mount.name),
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// Unmounts whatever is mounted under any agent's directory of pod `uid`
/// (`.../pods/<uid>/volumes/...`), wherever the agent's root is.
pub fn unmount_pod_volumes(uid: &str) {
    if uid.is_empty() {
        return;
    }
    let marker = format!("/pods/{uid}/volumes/");
    for mounted in mounted_paths() {
        if mounted.to_string_lossy().contains(&marker) {
            let _ = rustix::mount::unmount(&mounted, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Unmounts the pod's tmpfs volumes and removes its directory.
pub fn remove_pod_directory(pod_directory: &Path) {
    for mounted in mounted_paths() {
        if mounted.starts_with(pod_directory) {
            let _ = rustix::mount::unmount(&mounted, rustix::mount::UnmountFlags::DETACH);
        }
    }
    if mounted_paths().iter().any(|m| m.starts_with(pod_directory)) {
        // never delete through a mount
        return;
    }
    let _ = std::fs::remove_dir_all(pod_directory);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web", "tier": "front"}},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                "resources": {"limits": {"memory": "64Mi"}}}], "volumes": volumes},
        }))
        .unwrap()
    }

    fn sources() -> VolumeSources {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}}),
        )
        .unwrap();
        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": "db"}, "data": {"password": "czNjcmV0"}}),
        )
        .unwrap();
        VolumeSources {
            config_maps: BTreeMap::from([("cfg".into(), cm)]),
            secrets: BTreeMap::from([("db".into(), secret)]),
        }
    }

    #[test]
    fn config_map_secret_and_downward_files() {
        let pod = pod(json!([
            {"name": "all", "configMap": {"name": "cfg"}},
            {"name": "some", "configMap": {"name": "cfg", "items": [{"key": "b", "path": "sub/b.txt", "mode": 0o600}]}},
            {"name": "secret", "secret": {"secretName": "db", "defaultMode": 0o400}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}]}},
            {"name": "missing", "configMap": {"name": "nope"}},
            {"name": "optional", "secret": {"secretName": "nope", "optional": true}},
            {"name": "escape", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "../x"}]}},
        ]));
        let volumes = pod.spec.as_ref().unwrap().volumes.clone().unwrap();
        let files = |i: usize| projection(&pod, &volumes[i], &sources(), None);
        let all = files(0).unwrap().unwrap();
        assert_eq!(all["a"], (b"1".to_vec(), 0o644));
        assert_eq!(all.len(), 2);
        let some = files(1).unwrap().unwrap();
        assert_eq!(some["sub/b.txt"], (b"2".to_vec(), 0o600));
        let secret = files(2).unwrap().unwrap();
        assert_eq!(secret["password"], (b"s3cret".to_vec(), 0o400));
        let info = files(3).unwrap().unwrap();
        assert_eq!(info["labels"].0, b"app=\"web\"\ntier=\"front\"".to_vec());
        assert_eq!(info["name"].0, b"p".to_vec());
        assert_eq!(info["mem"].0, b"64".to_vec());
        assert_eq!(
            files(4).unwrap_err().to_string(),
            "configmap \"nope\" not found"
        );
        assert!(files(5).unwrap().unwrap().is_empty());
        assert!(matches!(files(6), Err(VolumeError::Path(_))));
    }

    #[test]
    fn atomic_writes_swap_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vol");
        let mut files = Files::from([
            ("a".to_owned(), (b"1".to_vec(), 0o644)),
            ("sub/b".to_owned(), (b"2".to_vec(), 0o600)),
        ]);
        assert!(write_atomically(&target, &files).unwrap());
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(target.join("sub/b")).unwrap(), b"2");
        // unchanged content is not rewritten
        assert!(!write_atomically(&target, &files).unwrap());
        files.insert("a".into(), (b"one".to_vec(), 0o644));
        files.remove("sub/b");
        assert!(write_atomically(&target, &files).unwrap());
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"one");
        assert!(!target.join("sub").exists());
        let stamps = std::fs::read_dir(&target)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .count();
        assert_eq!(stamps, 1, "the old data directory is removed");
    }
}

//! Static pods: Pod manifests (YAML or JSON, one or more documents per file) in the agent's
//! manifest directory run on this node. As the kubelet does, each gets a mirror pod in the API —
//! named `<name>-<node>`, bound to this node, owned by the Node, annotated with the manifest's
//! hash — so `kubectl` sees it; a changed manifest replaces the mirror pod, a removed one
//! deletes it, and a mirror pod deleted by hand comes back. The pod workers run mirror pods like
//! any pod bound here. A manifest that does not parse is reported (file and line) as a
//! `FailedStaticPod` event on the Node and skipped.
//!
//! Unlike the kubelet, which runs static pods from the files alone, this needs the API server
//! reachable (always the case for the agent inside `kelson server`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::Deserialize;
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pods::PodContext;

/// Annotation naming where a pod came from (`file`).
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// Annotation with the manifest's hash.
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Annotation marking a mirror pod (its value is the hash).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A manifest that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, with the line when known.
    pub message: String,
}

/// The mirror pods the manifests in `directory` describe for `node`, by name, and the
/// manifests that failed.
#[must_use]
pub fn desired(
    directory: &Path,
    node: &str,
) -> (BTreeMap<(String, String), Pod>, Vec<ManifestError>) {
    let mut pods = BTreeMap::new();
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(directory) else {
        return (pods, errors);
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) => {
                errors.push(ManifestError {
                    file,
                    message: error.to_string(),
                });
                continue;
            }
        };
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = match serde_yaml::Value::deserialize(document) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(value) => value,
                Err(error) => {
                    errors.push(ManifestError {
                        file: file.clone(),
                        message: error.to_string(),
                    });
                    break;
                }
            };
            match serde_yaml::from_value::<Pod>(value) {
                Ok(pod) => {
                    let manifest = serde_json::to_string(&pod).unwrap_or_default();
                    let mirror = mirror_pod(pod, node, &manifest);
                    let key = (
                        mirror.metadata.namespace.clone().unwrap_or_default(),
                        mirror.metadata.name.clone().unwrap_or_default(),
                    );
                    pods.insert(key, mirror);
                }
                Err(error) => errors.push(ManifestError {
                    file: file.clone(),
                    message: format!("not a Pod: {error}"),
                }),
            }
        }
    }
    (pods, errors)
}

/// The mirror pod of a manifest: renamed for the node, bound to it, annotated with the hash.
#[must_use]
pub fn mirror_pod(mut pod: Pod, node: &str, manifest: &str) -> Pod {
    let hash: String = sha2::Sha256::digest(format!("{node}\n{manifest}").as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = pod.metadata.name.clone().unwrap_or_else(|| "static".into());
    pod.metadata.name = Some(format!("{name}-{node}"));
    if pod.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        pod.metadata.namespace = Some("default".into());
    }
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(SOURCE_ANNOTATION.into(), "file".into());
    annotations.insert(HASH_ANNOTATION.into(), hash.clone());
    annotations.insert(MIRROR_ANNOTATION.into(), hash);
    pod.metadata.resource_version = None;
    pod.metadata.uid = None;
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_owned());
    pod.status = None;
    pod
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(MIRROR_ANNOTATION)
        .map(String::as_str)
}

/// Keeps the mirror pods in line with the manifests in `directory`, every 5 s.
pub async fn run(ctx: Arc<PodContext>, directory: PathBuf, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut reported: Vec<ManifestError> = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let node = ctx.node.name.clone();
        let (desired, errors) = {
            let directory = directory.clone();
            let node = node.clone();
            match tokio::task::spawn_blocking(move || desired(&directory, &node)).await {
                Ok(result) => result,
                Err(_) => continue,
            }
        };
        for error in errors.iter().filter(|e| !reported.contains(e)) {
            warn!(file = %error.file.display(), message = %error.message, "static pod manifest skipped");
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.clone()),
                ..Default::default()
            };
            let note = format!("{}: {}", error.file.display(), error.message);
            kelson_common::events::publish(
                &ctx.recorder,
                &reference,
                true,
                "FailedStaticPod",
                note,
            )
            .await;
        }
        reported = errors;
        if let Err(error) = reconcile(&ctx, &node, &desired).await {
            warn!(%error, "static pod sync failed");
        }
    }
}

async fn reconcile(
    ctx: &PodContext,
    node: &str,
    desired: &BTreeMap<(String, String), Pod>,
) -> kube::Result<()> {
    let all: Api<Pod> = Api::all(ctx.client.clone());
    let existing = all
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let mirrors: BTreeMap<(String, String), Pod> = existing
        .items
        .into_iter()
        .filter(|p| hash_of(p).is_some())
        .map(|p| {
            let key = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            );
            (key, p)
        })
        .collect();
    let owner = Api::<Node>::all(ctx.client.clone())
        .get_opt(node)
        .await?
        .and_then(|n| n.metadata.uid)
        .map(
            |uid| k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.to_owned(),
                uid,
                controller: Some(true),
                ..Default::default()
            },
        );
    // gone or changed manifests: delete their mirror pods
    for ((namespace, name), pod) in &mirrors {
        let wanted = desired.get(&(namespace.clone(), name.clone()));
        if wanted.is_some_and(|w| hash_of(w) == hash_of(pod))
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        info!(pod = %name, %namespace, "static pod manifest changed or removed; replacing its mirror pod");
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    // new manifests (and mirror pods deleted by hand): create
    for ((namespace, name), pod) in desired {
        if mirrors.contains_key(&(namespace.clone(), name.clone())) {
            continue;
        }
        let mut pod = pod.clone();
        if let Some(owner) = &owner {
            pod.metadata.owner_references = Some(vec![owner.clone()]);
        }
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => info!(pod = %name, %namespace, "static pod started"),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(kube::Error::Api(status)) => {
                warn!(pod = %name, message = %status.message, "static pod rejected by the API server");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_mirror_pods() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: busybox}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: data}\nspec:\n  containers: [{name: c, image: busybox}]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("broken.yaml"),
            "kind: Pod\nspec: [unclosed\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (pods, errors) = desired(dir.path(), "n1");
        assert_eq!(pods.len(), 2);
        let web = &pods[&("default".to_owned(), "web-n1".to_owned())];
        assert_eq!(web.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert_eq!(
            web.metadata.annotations.as_ref().unwrap()[SOURCE_ANNOTATION],
            "file"
        );
        assert!(pods.contains_key(&("data".to_owned(), "db-n1".to_owned())));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].file.ends_with("broken.yaml"));
        assert!(
            errors[0].message.contains("line 2"),
            "{}",
            errors[0].message
        );
        // a changed manifest changes the hash
        let before = hash_of(web).unwrap().to_owned();
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: busybox:1.35}]\n",
        )
        .unwrap();
        let (pods, _) = desired(dir.path(), "n1");
        let after = hash_of(&pods[&("default".to_owned(), "web-n1".to_owned())]).unwrap();
        assert_ne!(before, after);
    }
}

//! Pure translation of a Pod into CRI configs: the sandbox (namespaces, cgroup parent, hostname,
//! log directory, host ports) and each container (image, command, env, resources, security
//! context, log path). No IO: the worker resolves ConfigMap and Secret references first.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use kelson_common::quantity;

/// Label with the pod's name on sandboxes and containers (as the kubelet sets it).
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
/// Label with the pod's namespace.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Label with the pod's uid.
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
/// Label with the container's name.
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
/// Label with the node that runs the sandbox, so agents sharing one containerd keep apart.
pub const NODE_LABEL: &str = "io.kelson.node";
/// Annotation with the pod's restart count at creation of a container.
pub const RESTART_COUNT_ANNOTATION: &str = "io.kubernetes.container.restartCount";

/// Where a pod's container logs live.
pub const LOG_ROOT: &str = "/var/log/pods";

/// CRI namespace modes.
const POD: i32 = cri::NamespaceMode::Pod as i32;
const CONTAINER: i32 = cri::NamespaceMode::Container as i32;
const NODE: i32 = cri::NamespaceMode::Node as i32;

/// The name, namespace and uid of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl PodKey {
    /// The key of `pod`.
    #[must_use]
    pub fn of(pod: &Pod) -> Self {
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }

    /// The pod's log directory, `/var/log/pods/<ns>_<name>_<uid>`.
    #[must_use]
    pub fn log_directory(&self) -> String {
        format!("{LOG_ROOT}/{}_{}_{}", self.namespace, self.name, self.uid)
    }

    /// Labels the kubelet puts on the sandbox.
    #[must_use]
    pub fn labels(&self, node: &str) -> HashMap<String, String> {
        HashMap::from([
            (POD_NAME_LABEL.to_owned(), self.name.clone()),
            (POD_NAMESPACE_LABEL.to_owned(), self.namespace.clone()),
            (POD_UID_LABEL.to_owned(), self.uid.clone()),
            (NODE_LABEL.to_owned(), node.to_owned()),
        ])
    }
}

/// The pod's QoS class as the API server recorded it.
#[must_use]
pub fn qos_class(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.qos_class.as_deref())
        .unwrap_or("BestEffort")
}

/// The pod's cgroup parent, `/kubepods[/burstable|/besteffort]/pod<uid>`.
#[must_use]
pub fn cgroup_parent(pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    match qos_class(pod) {
        "Guaranteed" => format!("/kubepods/pod{uid}"),
        "Burstable" => format!("/kubepods/burstable/pod{uid}"),
        _ => format!("/kubepods/besteffort/pod{uid}"),
    }
}

/// Where pod `uid`'s cgroup may be, one per QoS class (see [`cgroup_parent`]).
#[must_use]
pub fn pod_cgroup_candidates(uid: &str) -> [String; 3] {
    ["", "burstable/", "besteffort/"].map(|qos| format!("/kubepods/{qos}pod{uid}"))
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// Whether the pod uses the node's network namespace.
#[must_use]
pub fn uses_host_network(pod: &Pod) -> bool {
    host_network(pod)
}

fn namespace_options(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.clone().unwrap_or_default();
    let pid = if spec.host_pid.unwrap_or(false) {
        NODE
    } else if spec.share_process_namespace.unwrap_or(false) {
        POD
    } else {
        CONTAINER
    };
    cri::NamespaceOption {
        network: if spec.host_network.unwrap_or(false) {
            NODE
        } else {
            POD
        },
        pid,
        ipc: if spec.host_ipc.unwrap_or(false) {
            NODE
        } else {
            POD
        },
        ..Default::default()
    }
}

/// How pods resolve names: the kubelet's `--cluster-dns`, `--cluster-domain` and the node's
/// own resolv.conf (`--resolv-conf`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// The cluster DNS Service's address(es); empty when the cluster has none.
    pub cluster_dns: Vec<String>,
    /// The cluster zone (`cluster.local`).
    pub domain: String,
    /// The node's nameservers.
    pub host_servers: Vec<String>,
    /// The node's search domains.
    pub host_searches: Vec<String>,
    /// The node's resolver options.
    pub host_options: Vec<String>,
}

impl DnsSettings {
    /// Settings with the node's resolver read from `resolv_conf` (its text).
    #[must_use]
    pub fn new(cluster_dns: Vec<String>, domain: &str, resolv_conf: &str) -> Self {
        let mut settings = Self {
            cluster_dns,
            domain: domain.trim_end_matches('.').to_owned(),
            ..Self::default()
        };
        for line in resolv_conf.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => settings
                    .host_servers
                    .extend(words.next().map(str::to_owned)),
                Some("search" | "domain") => {
                    settings.host_searches = words.map(str::to_owned).collect();
                }
                Some("options") => settings.host_options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        settings
    }
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The resolver of `pod` per its `dnsPolicy` and `dnsConfig`, as the kubelet builds it:
/// `ClusterFirst` (the default) points at the cluster DNS with the namespace's search path and
/// `ndots:5` — except for host-network pods, which get the node's resolver as with `Default`,
/// unless the policy is `ClusterFirstWithHostNet`; `None` takes only `dnsConfig`, which the
/// other policies merge in (nameservers and searches appended, options by name). Without a
/// cluster DNS, cluster policies fall back to the node's resolver.
#[must_use]
pub fn dns_config(pod: &Pod, dns: &DnsSettings) -> Option<cri::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let cluster = !dns.cluster_dns.is_empty()
        && match policy {
            "ClusterFirstWithHostNet" => true,
            "ClusterFirst" => !host_network,
            _ => false,
        };
    let mut config = cri::DnsConfig::default();
    if cluster {
        config.servers.clone_from(&dns.cluster_dns);
        let domain = &dns.domain;
        config.searches = vec![
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ];
        push_unique(&mut config.searches, dns.host_searches.iter().cloned());
        config.options = vec!["ndots:5".to_owned()];
    } else if policy != "None" {
        config.servers.clone_from(&dns.host_servers);
        config.searches.clone_from(&dns.host_searches);
        config.options.clone_from(&dns.host_options);
    }
    if let Some(extra) = &spec.dns_config {
        push_unique(
            &mut config.servers,
            extra.nameservers.iter().flatten().cloned(),
        );
        push_unique(
            &mut config.searches,
            extra.searches.iter().flatten().cloned(),
        );
        for option in extra.options.iter().flatten() {
            let Some(name) = option.name.as_deref() else {
                continue;
            };
            let text = match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name.to_owned(),
            };
            let existing = config
                .options
                .iter()
                .position(|o| o.split(':').next() == Some(name));
            match existing {
                Some(at) => config.options[at] = text,
                None => config.options.push(text),
            }
        }
    }
    // the resolver's limits, as the kubelet enforces them
    config.servers.truncate(3);
    config.searches.truncate(32);
    if config.servers.is_empty() && config.searches.is_empty() && config.options.is_empty() {
        return None;
    }
    Some(config)
}

/// The sandbox config of `pod` on `node` (`attempt` counts sandbox re-creations).
#[must_use]
pub fn sandbox_config(
    pod: &Pod,
    node: &str,
    dns: &DnsSettings,
    attempt: u32,
) -> cri::PodSandboxConfig {
    let key = PodKey::of(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = if host_network(pod) {
        String::new()
    } else {
        let mut hostname = spec.hostname.clone().unwrap_or_else(|| key.name.clone());
        hostname.truncate(63);
        hostname.trim_end_matches(['-', '.']).to_owned()
    };
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            let host_port = port.host_port.filter(|p| *p > 0)?;
            let protocol = match port.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp,
                Some("SCTP") => cri::Protocol::Sctp,
                _ => cri::Protocol::Tcp,
            };
            Some(cri::PortMapping {
                protocol: protocol as i32,
                container_port: port.container_port,
                host_port,
                host_ip: port.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect();
    let sysctls = spec
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.name, s.value))
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: key.name.clone(),
            uid: key.uid.clone(),
            namespace: key.namespace.clone(),
            attempt,
        }),
        hostname,
        log_directory: key.log_directory(),
        dns_config: dns_config(pod, dns),
        port_mappings,
        labels: key.labels(node),
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(pod),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                privileged: spec.containers.iter().any(privileged),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        windows: None,
    }
}

fn privileged(container: &Container) -> bool {
    container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
}

/// CPU shares for a cpu request in millicores (kubelet's formula, at least 2).
#[must_use]
pub fn cpu_shares(request_millis: i64) -> i64 {
    if request_millis <= 0 {
        return 2;
    }
    (request_millis * 1024 / 1000).max(2)
}

/// The oom_score_adj of a container (kubelet's policy; containerd clamps negative values on
/// machines that cannot lower it).
#[must_use]
pub fn oom_score_adj(qos: &str, memory_request: i64, memory_capacity: i64) -> i64 {
    match qos {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            if memory_capacity <= 0 {
                return 999;
            }
            let score = 1000 - (1000 * memory_request) / memory_capacity;
            score.clamp(2, 999)
        }
    }
}

fn resources(
    pod: &Pod,
    container: &Container,
    memory_capacity: i64,
) -> cri::LinuxContainerResources {
    let resources = container.resources.clone().unwrap_or_default();
    let requests = resources.requests.unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    let cpu_request = requests
        .get("cpu")
        .or_else(|| limits.get("cpu"))
        .map_or(0, quantity::cpu_millis);
    let memory_request = requests
        .get("memory")
        .or_else(|| limits.get("memory"))
        .map_or(0, quantity::units);
    let period = 100_000;
    let cpu_quota = limits
        .get("cpu")
        .map_or(0, |q| (quantity::cpu_millis(q) * period / 1000).max(1000));
    cri::LinuxContainerResources {
        cpu_period: if cpu_quota > 0 { period } else { 0 },
        cpu_quota,
        cpu_shares: cpu_shares(cpu_request),
        memory_limit_in_bytes: limits.get("memory").map_or(0, quantity::units),
        oom_score_adj: oom_score_adj(qos_class(pod), memory_request, memory_capacity),
        ..Default::default()
    }
}

fn security_context(pod: &Pod, container: &Container) -> cri::LinuxContainerSecurityContext {
    let pod_context = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let context = container.security_context.clone().unwrap_or_default();
    let run_as_user = context.run_as_user.or(pod_context.run_as_user);
    let run_as_group = context.run_as_group.or(pod_context.run_as_group);
    let capabilities = context.capabilities.clone().unwrap_or_default();
    cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: capabilities.add.unwrap_or_default(),
            drop_capabilities: capabilities.drop.unwrap_or_default(),
            ..Default::default()
        }),
        privileged: context.privileged.unwrap_or(false),
        namespace_options: Some(namespace_options(pod)),
        run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
        run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
        readonly_rootfs: context.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: pod_context.supplemental_groups.unwrap_or_default(),
        no_new_privs: context.allow_privilege_escalation == Some(false),
        ..Default::default()
    }
}

/// Checks `runAsNonRoot` against the user the container will run as (`runAsUser`, else the
/// image's uid or user name).
///
/// # Errors
/// The message kubelet gives for a CreateContainerConfigError.
pub fn verify_non_root(
    pod: &Pod,
    container: &Container,
    image_uid: Option<i64>,
    image_user: &str,
) -> Result<(), String> {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.clone());
    let context = container.security_context.clone();
    let non_root = context
        .as_ref()
        .and_then(|c| c.run_as_non_root)
        .or_else(|| pod_context.as_ref().and_then(|c| c.run_as_non_root))
        .unwrap_or(false);
    if !non_root {
        return Ok(());
    }
    let run_as = context
        .as_ref()
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_context.as_ref().and_then(|c| c.run_as_user));
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    match (run_as, image_uid) {
        (Some(0), _) => Err("container's runAsUser breaks non-root policy".into()),
        (Some(_), _) | (None, Some(1..)) => Ok(()),
        (None, Some(_)) => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{pod_name}\", container: {})",
            container.name
        )),
        (None, None) if image_user.is_empty() || image_user == "root" => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{pod_name}\", container: {})",
            container.name
        )),
        (None, None) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root (pod: \"{pod_name}\", container: {})",
            container.name
        )),
    }
}

/// Values the worker looked up for `valueFrom` and `envFrom` references.
#[derive(Clone, Debug, Default)]
pub struct EnvSources {
    /// ConfigMaps by name (data merged with binaryData as text).
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Secrets by name (decoded).
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// The pod's IP, once the sandbox has one.
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
}

/// A reference the pod makes that could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A ConfigMap or Secret is missing.
    #[error("{kind} \"{name}\" not found")]
    Missing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A key is missing from a ConfigMap or Secret.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A fieldRef the kubelet does not know.
    #[error("unsupported fieldPath {0}")]
    FieldPath(String),
    /// A resourceFieldRef the kubelet does not know.
    #[error("unsupported resource {0}")]
    Resource(String),
}

fn field_value(pod: &Pod, path: &str, sources: &EnvSources) -> Result<String, ConfigError> {
    let metadata = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let bracket = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['").or_else(|| rest.strip_prefix("[\"")))
            .and_then(|rest| rest.strip_suffix("']").or_else(|| rest.strip_suffix("\"]")))
            .map(str::to_owned)
    };
    for (prefix, map) in [
        ("metadata.labels", &metadata.labels),
        ("metadata.annotations", &metadata.annotations),
    ] {
        if let Some(key) = bracket(prefix) {
            return Ok(map
                .as_ref()
                .and_then(|m| m.get(&key).cloned())
                .unwrap_or_default());
        }
    }
    Ok(match path {
        "metadata.name" => metadata.name.clone().unwrap_or_default(),
        "metadata.namespace" => metadata.namespace.clone().unwrap_or_default(),
        "metadata.uid" => metadata.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" | "status.podIPs" => sources.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => sources.host_ip.clone(),
        other => return Err(ConfigError::FieldPath(other.to_owned())),
    })
}

fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    node_allocatable: &BTreeMap<String, i64>,
) -> Result<String, ConfigError> {
    let resources = container.resources.clone().unwrap_or_default();
    let (map, name) = match resource.split_once('.') {
        Some(("limits", name)) => (resources.limits.unwrap_or_default(), name),
        Some(("requests", name)) => (resources.requests.unwrap_or_default(), name),
        _ => return Err(ConfigError::Resource(resource.to_owned())),
    };
    let is_cpu = name == "cpu";
    let value = match map.get(name) {
        Some(q) if is_cpu => quantity::cpu_millis(q),
        Some(q) => quantity::units(q),
        None if resource.starts_with("limits") => {
            // an unset limit reads as the node's allocatable
            node_allocatable.get(name).copied().unwrap_or(0)
        }
        None => 0,
    };
    let divisor = divisor.map_or(if is_cpu { 1000 } else { 1 }, |d| {
        if is_cpu {
            quantity::cpu_millis(d).max(1)
        } else {
            quantity::units(d).max(1)
        }
    });
    // Kubernetes rounds up
    Ok(((value + divisor - 1) / divisor).to_string())
}

fn data_value(
    map: &BTreeMap<String, BTreeMap<String, String>>,
    kind: &'static str,
    namespace: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, ConfigError> {
    let Some(data) = map.get(name) else {
        if optional {
            return Ok(None);
        }
        return Err(ConfigError::Missing {
            kind: if kind == "ConfigMap" {
                "configmap"
            } else {
                "secret"
            },
            name: name.to_owned(),
        });
    };
    match data.get(key) {
        Some(value) => Ok(Some(value.clone())),
        None if optional => Ok(None),
        None => Err(ConfigError::MissingKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        }),
    }
}

/// Expands `$(VAR)` references to earlier variables, as Kubernetes does (`$$` escapes).
#[must_use]
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.find('$') {
        out.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: `envFrom` first, then `env` in order (later wins), with
/// `$(VAR)` expansion.
///
/// # Errors
/// When a referenced ConfigMap, Secret or key is missing and not optional.
pub fn environment(
    pod: &Pod,
    container: &Container,
    sources: &EnvSources,
    node_allocatable: &BTreeMap<String, i64>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, map) = if let Some(cm) = &from.config_map_ref {
            (
                "ConfigMap",
                cm.name.clone(),
                cm.optional,
                &sources.config_maps,
            )
        } else if let Some(secret) = &from.secret_ref {
            (
                "Secret",
                secret.name.clone(),
                secret.optional,
                &sources.secrets,
            )
        } else {
            continue;
        };
        match map.get(&name) {
            Some(data) => {
                for (key, value) in data {
                    set(&mut env, format!("{prefix}{key}"), value.clone());
                }
            }
            None if optional.unwrap_or(false) => {}
            None => {
                return Err(ConfigError::Missing {
                    kind: if kind == "ConfigMap" {
                        "configmap"
                    } else {
                        "secret"
                    },
                    name,
                });
            }
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let resolved = match value_from {
            None => Some(expand(value.as_deref().unwrap_or_default(), &env)),
            Some(from) => {
                if let Some(field) = &from.field_ref {
                    Some(field_value(pod, &field.field_path, sources)?)
                } else if let Some(resource) = &from.resource_field_ref {
                    let target = resource
                        .container_name
                        .as_deref()
                        .and_then(|n| pod.spec.as_ref()?.containers.iter().find(|c| c.name == n))
                        .unwrap_or(container);
                    Some(resource_value(
                        target,
                        &resource.resource,
                        resource.divisor.as_ref(),
                        node_allocatable,
                    )?)
                } else if let Some(key) = &from.config_map_key_ref {
                    data_value(
                        &sources.config_maps,
                        "ConfigMap",
                        namespace,
                        &key.name,
                        &key.key,
                        key.optional.unwrap_or(false),
                    )?
                } else if let Some(key) = &from.secret_key_ref {
                    data_value(
                        &sources.secrets,
                        "Secret",
                        namespace,
                        &key.name,
                        &key.key,
                        key.optional.unwrap_or(false),
                    )?
                } else {
                    None
                }
            }
        };
        if let Some(resolved) = resolved {
            set(&mut env, name.clone(), resolved);
        }
    }
    Ok(env)
}

/// The config of `container` (restart `attempt`) in `pod`.
#[must_use]
pub fn container_config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    image: &str,
    env: &[(String, String)],
    node: &str,
    memory_capacity: i64,
) -> cri::ContainerConfig {
    let key = PodKey::of(pod);
    let mut labels = key.labels(node);
    labels.insert(CONTAINER_NAME_LABEL.to_owned(), container.name.clone());
    let expand_all = |items: &Option<Vec<String>>| {
        items
            .iter()
            .flatten()
            .map(|item| expand(item, env))
            .collect::<Vec<_>>()
    };
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        labels,
        annotations: HashMap::from([(RESTART_COUNT_ANNOTATION.to_owned(), attempt.to_string())]),
        log_path: format!("{}/{attempt}.log", container.name),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources(pod, container, memory_capacity)),
            security_context: Some(security_context(pod, container)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
            "spec": spec,
            "status": {"qosClass": "Burstable"},
        }))
        .unwrap()
    }

    #[test]
    fn sandbox_namespaces_ports_and_cgroup() {
        let pod = pod(json!({"containers": [{"name": "c", "image": "busybox",
            "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]}]}));
        let config = sandbox_config(&pod, "n1", &DnsSettings::default(), 0);
        assert_eq!(config.log_directory, "/var/log/pods/shop_web_u1");
        assert_eq!(config.hostname, "web");
        assert_eq!(config.port_mappings.len(), 1);
        assert_eq!(config.port_mappings[0].host_port, 8080);
        let linux = config.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/kubepods/burstable/podu1");
        let namespaces = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!(namespaces.network, POD);
        assert_eq!(namespaces.pid, CONTAINER);
        assert_eq!(config.labels[NODE_LABEL], "n1");
    }

    #[test]
    fn resources_and_oom_score() {
        let pod = pod(json!({"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}}]}));
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let config = container_config(&pod, container, 2, "busybox", &[], "n1", 1 << 30);
        let resources = config.linux.unwrap().resources.unwrap();
        assert_eq!(resources.cpu_shares, 256);
        assert_eq!(resources.cpu_quota, 50_000);
        assert_eq!(resources.cpu_period, 100_000);
        assert_eq!(resources.memory_limit_in_bytes, 128 << 20);
        assert_eq!(resources.oom_score_adj, 938);
        assert_eq!(config.log_path, "c/2.log");
        assert_eq!(oom_score_adj("Guaranteed", 1, 1), -997);
        assert_eq!(oom_score_adj("BestEffort", 0, 1), 1000);
    }

    #[test]
    fn non_root_policy() {
        let pod = pod(json!({"securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c", "image": "busybox"}]}));
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert!(
            verify_non_root(&pod, container, None, "")
                .unwrap_err()
                .contains("will run as root")
        );
        assert!(verify_non_root(&pod, container, Some(0), "").is_err());
        assert!(verify_non_root(&pod, container, Some(1000), "").is_ok());
        assert!(
            verify_non_root(&pod, container, None, "app")
                .unwrap_err()
                .contains("non-numeric")
        );
        let user = pod_with_user(1000);
        assert!(
            verify_non_root(&user, &user.spec.as_ref().unwrap().containers[0], None, "").is_ok()
        );
    }

    fn pod_with_user(uid: i64) -> Pod {
        pod(
            json!({"securityContext": {"runAsNonRoot": true, "runAsUser": uid},
            "containers": [{"name": "c", "image": "busybox"}]}),
        )
    }

    #[test]
    fn environment_resolves_and_expands() {
        let pod = pod(json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"limits": {"memory": "64Mi"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "A", "value": "one"},
            {"name": "B", "value": "$(A)-two $$(A) $(MISSING)"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        ]}]}));
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let sources = EnvSources {
            config_maps: BTreeMap::from([(
                "cfg".into(),
                BTreeMap::from([("mode".into(), "fast".into())]),
            )]),
            secrets: BTreeMap::from([(
                "db".into(),
                BTreeMap::from([("password".into(), "s3cret".into())]),
            )]),
            pod_ip: "10.88.0.7".into(),
            host_ip: "192.0.2.1".into(),
        };
        let env = environment(&pod, container, &sources, &BTreeMap::new()).unwrap();
        let get = |k: &str| env.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(get("CFG_mode"), "fast");
        assert_eq!(get("B"), "one-two $(A) $(MISSING)");
        assert_eq!(get("NAME"), "web");
        assert_eq!(get("APP"), "web");
        assert_eq!(get("IP"), "10.88.0.7");
        assert_eq!(get("MEM"), "64");
        assert_eq!(get("PASS"), "s3cret");
        let missing = EnvSources::default();
        let error = environment(&pod, container, &missing, &BTreeMap::new()).unwrap_err();
        assert_eq!(error.to_string(), "configmap \"cfg\" not found");
    }

    #[test]
    fn resolvers_follow_the_dns_policy() {
        let dns = DnsSettings::new(
            vec!["10.96.0.10".into()],
            "cluster.local",
            "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n",
        );
        let pod = |spec: serde_json::Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
            )
            .unwrap()
        };
        let cluster = dns_config(&pod(serde_json::json!({"containers": []})), &dns).unwrap();
        assert_eq!(cluster.servers, ["10.96.0.10"]);
        assert_eq!(
            cluster.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(cluster.options, ["ndots:5"]);

        let host = dns_config(
            &pod(serde_json::json!({"containers": [], "hostNetwork": true})),
            &dns,
        )
        .unwrap();
        assert_eq!(host.servers, ["192.0.2.53"]);
        assert_eq!(host.options, ["edns0"]);
        let with_host_net = dns_config(
            &pod(serde_json::json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &dns,
        )
        .unwrap();
        assert_eq!(with_host_net.servers, ["10.96.0.10"]);

        let custom = dns_config(
            &pod(serde_json::json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}})),
            &dns,
        )
        .unwrap();
        assert_eq!(custom.servers, ["1.1.1.1"]);
        assert_eq!(custom.searches, ["a.example"]);
        assert_eq!(custom.options, ["ndots:2", "rotate"]);

        let merged = dns_config(
            &pod(serde_json::json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}})),
            &dns,
        )
        .unwrap();
        assert_eq!(merged.options, ["ndots:1"]);

        // no cluster DNS: the node's resolver
        let none = DnsSettings::new(Vec::new(), "cluster.local", "nameserver 192.0.2.53\n");
        assert_eq!(
            dns_config(&pod(serde_json::json!({"containers": []})), &none)
                .unwrap()
                .servers,
            ["192.0.2.53"]
        );
    }
}

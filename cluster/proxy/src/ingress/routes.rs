//! The routing table of the Ingress controller, built from the Ingresses of its class (pure).
//!
//! Matching follows the Ingress specification as ingress-nginx applies it: a request's host picks
//! the rules of that exact host, else of a matching wildcard host (`*.example.com` covers one
//! label), else the rules without a host; among those, the longest matching path wins, `Exact`
//! before `Prefix` (and `ImplementationSpecific`, treated as `Prefix`) at equal length, a prefix
//! matching whole path elements (`/api` matches `/api` and `/api/v1`, not `/apis`). No match: the
//! default backend of an Ingress, else 404.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

/// Where matching traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// Namespace of the Ingress (and so of the Service).
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Service port: a number or a name.
    pub port: PortRef,
}

/// A Service port by number or name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortRef {
    /// `port.number`.
    Number(i32),
    /// `port.name`.
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Exact,
    Prefix,
}

#[derive(Clone, Debug)]
struct Path {
    path: String,
    kind: Kind,
    backend: Backend,
    /// `namespace/name` of the Ingress, for a stable order among equal rules (oldest wins in
    /// ingress-nginx; the name is what we have without creation times at hand).
    origin: String,
}

/// A TLS entry: the hosts a Secret's certificate serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// Hosts (may be wildcards).
    pub hosts: Vec<String>,
    /// Namespace of the Secret.
    pub namespace: String,
    /// Secret name (type kubernetes.io/tls).
    pub secret: String,
}

/// The routing table.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    exact: BTreeMap<String, Vec<Path>>,
    /// Wildcard suffix (`.example.com`) → paths.
    wildcard: BTreeMap<String, Vec<Path>>,
    any: Vec<Path>,
    default: Option<Backend>,
    /// TLS entries of every Ingress.
    pub tls: Vec<Tls>,
}

/// Whether an Ingress belongs to the controller of class `class` (its `ingressClassName`, the
/// old annotation, or no class at all when `class` is the default class).
#[must_use]
pub fn is_ours(ingress: &Ingress, class: &str, default_class: bool) -> bool {
    let named = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/ingress.class"))
                .map(String::as_str)
        });
    match named {
        Some(named) => named == class,
        None => default_class,
    }
}

fn backend(namespace: &str, backend: &IngressBackend) -> Option<Backend> {
    let service = backend.service.as_ref()?;
    let port = service.port.as_ref()?;
    let port = match (&port.number, &port.name) {
        (Some(number), _) => PortRef::Number(*number),
        (None, Some(name)) => PortRef::Name(name.clone()),
        (None, None) => return None,
    };
    Some(Backend {
        namespace: namespace.to_owned(),
        service: service.name.clone(),
        port,
    })
}

/// Builds the table from the Ingresses of class `class`.
#[must_use]
pub fn build(ingresses: &[Arc<Ingress>], class: &str, default_class: bool) -> Routes {
    let mut routes = Routes::default();
    let mut ours: Vec<&Ingress> = ingresses
        .iter()
        .map(AsRef::as_ref)
        .filter(|i| is_ours(i, class, default_class) && i.metadata.deletion_timestamp.is_none())
        .collect();
    ours.sort_by_key(|i| (i.metadata.namespace.clone(), i.metadata.name.clone()));
    for ingress in ours {
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let origin = format!(
            "{namespace}/{}",
            ingress.metadata.name.as_deref().unwrap_or("")
        );
        let Some(spec) = &ingress.spec else {
            continue;
        };
        if routes.default.is_none()
            && let Some(default) = spec
                .default_backend
                .as_ref()
                .and_then(|b| backend(namespace, b))
        {
            routes.default = Some(default);
        }
        for tls in spec.tls.iter().flatten() {
            if let Some(secret) = &tls.secret_name {
                routes.tls.push(Tls {
                    hosts: tls.hosts.clone().unwrap_or_default(),
                    namespace: namespace.to_owned(),
                    secret: secret.clone(),
                });
            }
        }
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.clone().unwrap_or_default().to_ascii_lowercase();
            let bucket = if host.is_empty() {
                &mut routes.any
            } else if let Some(suffix) = host.strip_prefix('*') {
                routes.wildcard.entry(suffix.to_owned()).or_default()
            } else {
                routes.exact.entry(host).or_default()
            };
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let Some(target) = backend(namespace, &path.backend) else {
                    continue;
                };
                let kind = if path.path_type == "Exact" {
                    Kind::Exact
                } else {
                    Kind::Prefix
                };
                bucket.push(Path {
                    path: path.path.clone().unwrap_or_else(|| "/".to_owned()),
                    kind,
                    backend: target,
                    origin: origin.clone(),
                });
            }
        }
    }
    for paths in routes
        .exact
        .values_mut()
        .chain(routes.wildcard.values_mut())
        .chain(std::iter::once(&mut routes.any))
    {
        // longest first, Exact before Prefix, then the older (by name) Ingress
        paths.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then(a.kind.cmp(&b.kind))
                .then(a.origin.cmp(&b.origin))
        });
    }
    routes
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Routes {
    /// The backend for a request to `host` (without port) and `path`: `None` when nothing,
    /// not even a default backend, matches.
    #[must_use]
    pub fn find(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = host.to_ascii_lowercase();
        let wildcard = || {
            let dot = host.find('.').filter(|dot| *dot > 0)?;
            self.wildcard.get(&host[dot..])
        };
        let paths = self.exact.get(&host).or_else(wildcard).unwrap_or(&self.any);
        paths
            .iter()
            .find(|p| match p.kind {
                Kind::Exact => p.path == path,
                Kind::Prefix => prefix_matches(&p.path, path),
            })
            .map(|p| &p.backend)
            .or(self.default.as_ref())
    }

    /// Every backend the table names (to resolve their endpoints ahead of requests).
    #[must_use]
    pub fn backends(&self) -> Vec<&Backend> {
        let mut out: Vec<&Backend> = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .chain(std::iter::once(&self.any))
            .flatten()
            .map(|p| &p.backend)
            .chain(self.default.as_ref())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether any rule exists.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.any.is_empty()
            && self.default.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(name: &str, spec: serde_json::Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"namespace": "shop", "name": name}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn path(path: &str, kind: &str, service: &str) -> serde_json::Value {
        json!({"path": path, "pathType": kind, "backend": {"service": {"name": service, "port": {"number": 80}}}})
    }

    fn to(routes: &Routes, host: &str, uri: &str) -> Option<String> {
        routes.find(host, uri).map(|b| b.service.clone())
    }

    #[test]
    fn hosts_then_longest_paths_win() {
        let ingresses = [
            ingress(
                "a",
                json!({"ingressClassName": "kelson", "rules": [
                {"host": "shop.example.com", "http": {"paths": [path("/", "Prefix", "web"), path("/api", "Prefix", "api"), path("/api/login", "Exact", "login")]}},
                {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
                {"http": {"paths": [path("/", "Prefix", "catchall")]}}]}),
            ),
            ingress(
                "b",
                json!({"ingressClassName": "other", "rules": [{"host": "shop.example.com", "http": {"paths": [path("/other", "Prefix", "theirs")]}}]}),
            ),
        ];
        let routes = build(&ingresses, "kelson", false);
        assert_eq!(to(&routes, "shop.example.com", "/").as_deref(), Some("web"));
        assert_eq!(
            to(&routes, "SHOP.example.com", "/api").as_deref(),
            Some("api")
        );
        assert_eq!(
            to(&routes, "shop.example.com", "/api/v1").as_deref(),
            Some("api")
        );
        assert_eq!(
            to(&routes, "shop.example.com", "/apis").as_deref(),
            Some("web")
        );
        assert_eq!(
            to(&routes, "shop.example.com", "/api/login").as_deref(),
            Some("login")
        );
        assert_eq!(
            to(&routes, "shop.example.com", "/api/login/x").as_deref(),
            Some("api")
        );
        assert_eq!(
            to(&routes, "shop.example.com", "/other").as_deref(),
            Some("web"),
            "another class's rule is ignored"
        );
        assert_eq!(
            to(&routes, "blog.example.com", "/x").as_deref(),
            Some("wild")
        );
        assert_eq!(
            to(&routes, "a.blog.example.com", "/x").as_deref(),
            Some("catchall"),
            "a wildcard covers one label"
        );
        assert_eq!(to(&routes, "10.0.0.1", "/x").as_deref(), Some("catchall"));
        assert_eq!(routes.backends().len(), 5);
    }

    #[test]
    fn default_backend_class_and_tls() {
        let ingresses = [ingress(
            "a",
            json!({"rules": [{"host": "a.test", "http": {"paths": [path("/exact", "Exact", "a")]}}],
                "defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}},
                "tls": [{"hosts": ["a.test"], "secretName": "a-cert"}]}),
        )];
        assert!(
            build(&ingresses, "kelson", false).is_empty(),
            "no class: only the default class takes it"
        );
        let routes = build(&ingresses, "kelson", true);
        assert_eq!(to(&routes, "a.test", "/exact").as_deref(), Some("a"));
        assert_eq!(
            to(&routes, "a.test", "/exact/more").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            routes.find("b.test", "/").unwrap().port,
            PortRef::Name("http".into())
        );
        assert_eq!(
            routes.tls,
            [Tls {
                hosts: vec!["a.test".into()],
                namespace: "shop".into(),
                secret: "a-cert".into()
            }]
        );
    }
}

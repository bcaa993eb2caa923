//! Node state as Kubernetes defines it.

use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint, Toleration};

/// The condition of a type, if present.
#[must_use]
pub fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// `Ready` is True.
#[must_use]
pub fn is_ready(node: &Node) -> bool {
    condition(node, "Ready").is_some_and(|c| c.status == "True")
}

/// Whether a toleration tolerates a taint (Kubernetes' `ToleratesTaint`).
#[must_use]
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        _ => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
                && !key.is_empty()
        }
    }
}

/// Whether some toleration tolerates the taint.
#[must_use]
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    #[test]
    fn tolerations() {
        let exists_all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists_all, &taint("any", None, "NoSchedule")));
        let equal = Toleration {
            key: Some("gpu".into()),
            value: Some("yes".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        assert!(tolerates(&equal, &taint("gpu", Some("yes"), "NoSchedule")));
        assert!(!tolerates(&equal, &taint("gpu", Some("no"), "NoSchedule")));
        assert!(!tolerates(&equal, &taint("gpu", Some("yes"), "NoExecute")));
    }
}

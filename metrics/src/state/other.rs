//! The remaining kinds: HorizontalPodAutoscalers, ResourceQuotas, PodDisruptionBudgets, Leases,
//! ConfigMaps and Secrets.

use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, MetricTarget};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt as _;

use super::core::quantity;
use super::{Allow, Family, Lines, Object, created, gauge};

const ANNOTATIONS: &str = "Kubernetes annotations converted to Prometheus labels.";
const LABELS: &str = "[STABLE] Kubernetes labels converted to Prometheus labels.";

impl Object for HorizontalPodAutoscaler {
    const RESOURCE: &'static str = "horizontalpodautoscalers";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kube_horizontalpodautoscaler_info",
            "Information about this autoscaler.",
        ),
        gauge(
            "kube_horizontalpodautoscaler_metadata_generation",
            "[STABLE] The generation observed by the HorizontalPodAutoscaler controller.",
        ),
        gauge(
            "kube_horizontalpodautoscaler_spec_max_replicas",
            "[STABLE] Upper limit for the number of pods that can be set by the autoscaler; cannot be smaller than MinReplicas.",
        ),
        gauge(
            "kube_horizontalpodautoscaler_spec_min_replicas",
            "[STABLE] Lower limit for the number of pods that can be set by the autoscaler, default 1.",
        ),
        gauge(
            "kube_horizontalpodautoscaler_spec_target_metric",
            "The metric specifications used by this autoscaler when calculating the desired replica count.",
        ),
        gauge(
            "kube_horizontalpodautoscaler_status_target_metric",
            "[STABLE] The current metric status used by this autoscaler when calculating the desired replica count.",
        ),
        gauge(
            "kube_horizontalpodautoscaler_status_current_replicas",
            "[STABLE] Current number of replicas of pods managed by this autoscaler.",
        ),
        gauge(
            "kube_horizontalpodautoscaler_status_desired_replicas",
            "[STABLE] Desired number of replicas of pods managed by this autoscaler.",
        ),
        gauge("kube_horizontalpodautoscaler_annotations", ANNOTATIONS),
        gauge("kube_horizontalpodautoscaler_labels", LABELS),
        gauge(
            "kube_horizontalpodautoscaler_status_condition",
            "[STABLE] The condition of this autoscaler.",
        ),
        gauge(
            "kube_horizontalpodautoscaler_created",
            "Unix creation timestamp",
        ),
        gauge(
            "kube_horizontalpodautoscaler_deletion_timestamp",
            "Unix deletion timestamp",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("horizontalpodautoscaler", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata(
            "kube_horizontalpodautoscaler",
            &labels,
            &self.metadata,
            allow,
        );
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let mut info = labels.to_vec();
        if let Some(version) = target.api_version.as_deref().filter(|v| !v.is_empty()) {
            info.push(("scaletargetref_api_version", version));
        }
        info.extend([
            ("scaletargetref_kind", target.kind.as_str()),
            ("scaletargetref_name", target.name.as_str()),
        ]);
        out.add("kube_horizontalpodautoscaler_info", &info, 1.0);
        out.add(
            "kube_horizontalpodautoscaler_metadata_generation",
            &labels,
            self.metadata.generation.unwrap_or(0) as f64,
        );
        out.add(
            "kube_horizontalpodautoscaler_spec_max_replicas",
            &labels,
            f64::from(spec.max_replicas),
        );
        out.add(
            "kube_horizontalpodautoscaler_spec_min_replicas",
            &labels,
            f64::from(spec.min_replicas.unwrap_or(1)),
        );
        for metric in spec.metrics.iter().flatten() {
            let (name, container, target) = match metric.type_.as_str() {
                "Resource" => metric
                    .resource
                    .as_ref()
                    .map(|r| (r.name.clone(), String::new(), r.target.clone())),
                "ContainerResource" => metric
                    .container_resource
                    .as_ref()
                    .map(|r| (r.name.clone(), r.container.clone(), r.target.clone())),
                "Pods" => metric
                    .pods
                    .as_ref()
                    .map(|p| (p.metric.name.clone(), String::new(), p.target.clone())),
                "Object" => metric
                    .object
                    .as_ref()
                    .map(|o| (o.metric.name.clone(), String::new(), o.target.clone())),
                "External" => metric
                    .external
                    .as_ref()
                    .map(|e| (e.metric.name.clone(), String::new(), e.target.clone())),
                _ => None,
            }
            .unwrap_or_default();
            target_samples(
                out,
                "kube_horizontalpodautoscaler_spec_target_metric",
                &labels,
                &name,
                &container,
                &target,
            );
        }
        for metric in status.current_metrics.iter().flatten() {
            let current = match metric.type_.as_str() {
                "Resource" => metric
                    .resource
                    .as_ref()
                    .map(|r| (r.name.clone(), String::new(), r.current.clone())),
                "ContainerResource" => metric
                    .container_resource
                    .as_ref()
                    .map(|r| (r.name.clone(), r.container.clone(), r.current.clone())),
                "Pods" => metric
                    .pods
                    .as_ref()
                    .map(|p| (p.metric.name.clone(), String::new(), p.current.clone())),
                "Object" => metric
                    .object
                    .as_ref()
                    .map(|o| (o.metric.name.clone(), String::new(), o.current.clone())),
                "External" => metric
                    .external
                    .as_ref()
                    .map(|e| (e.metric.name.clone(), String::new(), e.current.clone())),
                _ => None,
            };
            let Some((name, container, current)) = current else {
                continue;
            };
            let target = MetricTarget {
                average_utilization: current.average_utilization,
                average_value: current.average_value,
                type_: String::new(),
                value: current.value,
            };
            target_samples(
                out,
                "kube_horizontalpodautoscaler_status_target_metric",
                &labels,
                &name,
                &container,
                &target,
            );
        }
        out.add(
            "kube_horizontalpodautoscaler_status_current_replicas",
            &labels,
            f64::from(status.current_replicas.unwrap_or(0)),
        );
        out.add(
            "kube_horizontalpodautoscaler_status_desired_replicas",
            &labels,
            f64::from(status.desired_replicas),
        );
        for condition in status.conditions.iter().flatten() {
            out.condition(
                "kube_horizontalpodautoscaler_status_condition",
                &[labels[0], labels[1], ("condition", &condition.type_)],
                "status",
                &condition.status,
            );
        }
    }
}

/// One sample per target field set: `value`, `utilization`, `average`.
fn target_samples(
    out: &mut Lines,
    family: &str,
    labels: &[(&str, &str)],
    metric: &str,
    container: &str,
    target: &MetricTarget,
) {
    let values = [
        ("value", target.value.as_ref().and_then(quantity)),
        ("utilization", target.average_utilization.map(f64::from)),
        ("average", target.average_value.as_ref().and_then(quantity)),
    ];
    for (kind, value) in values {
        let Some(value) = value else {
            continue;
        };
        let mut series = labels.to_vec();
        series.extend([
            ("metric_name", metric),
            ("metric_target_type", kind),
            ("container", container),
        ]);
        out.add(family, &series, value);
    }
}

impl Object for ResourceQuota {
    const RESOURCE: &'static str = "resourcequotas";
    const FAMILIES: &'static [Family] = &[
        created!("kube_resourcequota_created"),
        gauge(
            "kube_resourcequota",
            "[STABLE] Information about resource quota.",
        ),
        gauge("kube_resourcequota_annotations", ANNOTATIONS),
        gauge("kube_resourcequota_labels", LABELS),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("resourcequota", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_resourcequota", &labels, &self.metadata, allow);
        let status = self.status.clone().unwrap_or_default();
        for (kind, list) in [("hard", &status.hard), ("used", &status.used)] {
            for (resource, value) in list.iter().flatten() {
                if let Some(value) = quantity(value) {
                    out.add(
                        "kube_resourcequota",
                        &[labels[0], labels[1], ("resource", resource), ("type", kind)],
                        value,
                    );
                }
            }
        }
    }
}

impl Object for PodDisruptionBudget {
    const RESOURCE: &'static str = "poddisruptionbudgets";
    const FAMILIES: &'static [Family] = &[
        gauge("kube_poddisruptionbudget_annotations", ANNOTATIONS),
        gauge(
            "kube_poddisruptionbudget_labels",
            "Kubernetes labels converted to Prometheus labels.",
        ),
        created!("kube_poddisruptionbudget_created"),
        gauge(
            "kube_poddisruptionbudget_status_current_healthy",
            "[STABLE] Current number of healthy pods",
        ),
        gauge(
            "kube_poddisruptionbudget_status_desired_healthy",
            "[STABLE] Minimum desired number of healthy pods",
        ),
        gauge(
            "kube_poddisruptionbudget_status_pod_disruptions_allowed",
            "[STABLE] Number of pod disruptions that are currently allowed",
        ),
        gauge(
            "kube_poddisruptionbudget_status_expected_pods",
            "[STABLE] Total number of pods counted by this disruption budget",
        ),
        gauge(
            "kube_poddisruptionbudget_status_observed_generation",
            "[STABLE] Most recent generation observed when updating this PDB status",
        ),
        gauge(
            "kube_poddisruptionbudget_deletion_timestamp",
            "Unix deletion timestamp",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("poddisruptionbudget", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_poddisruptionbudget", &labels, &self.metadata, allow);
        let status = self.status.clone().unwrap_or_default();
        for (name, value) in [
            (
                "kube_poddisruptionbudget_status_current_healthy",
                status.current_healthy,
            ),
            (
                "kube_poddisruptionbudget_status_desired_healthy",
                status.desired_healthy,
            ),
            (
                "kube_poddisruptionbudget_status_pod_disruptions_allowed",
                status.disruptions_allowed,
            ),
            (
                "kube_poddisruptionbudget_status_expected_pods",
                status.expected_pods,
            ),
        ] {
            out.add(name, &labels, f64::from(value));
        }
        out.add(
            "kube_poddisruptionbudget_status_observed_generation",
            &labels,
            status.observed_generation.unwrap_or(0) as f64,
        );
    }
}

impl Object for Lease {
    const RESOURCE: &'static str = "leases";
    const FAMILIES: &'static [Family] = &[
        gauge("kube_lease_owner", "Information about the Lease's owner."),
        gauge("kube_lease_renew_time", "Kube lease renew time."),
    ];

    fn render(&self, out: &mut Lines, _allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let spec = self.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let owners = self.owner_references();
        let mut rows: Vec<(&str, &str)> = owners
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str()))
            .collect();
        if rows.is_empty() {
            rows.push(("", ""));
        }
        for (kind, owner) in rows {
            out.add(
                "kube_lease_owner",
                &[
                    ("lease", &name),
                    ("owner_kind", kind),
                    ("owner_name", owner),
                    ("namespace", &namespace),
                    ("lease_holder", holder),
                ],
                1.0,
            );
        }
        if let Some(renewed) = &spec.renew_time {
            out.add(
                "kube_lease_renew_time",
                &[("lease", &name), ("namespace", &namespace)],
                renewed.0.as_second() as f64,
            );
        }
    }
}

impl Object for ConfigMap {
    const RESOURCE: &'static str = "configmaps";
    const FAMILIES: &'static [Family] = &[
        gauge("kube_configmap_annotations", ANNOTATIONS),
        gauge("kube_configmap_labels", LABELS),
        gauge(
            "kube_configmap_info",
            "[STABLE] Information about configmap.",
        ),
        created!("kube_configmap_created"),
        gauge(
            "kube_configmap_metadata_resource_version",
            "Resource version representing a specific version of the configmap.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("configmap", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_configmap", &labels, &self.metadata, allow);
        out.add("kube_configmap_info", &labels, 1.0);
        out.some(
            "kube_configmap_metadata_resource_version",
            &labels,
            self.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<f64>().ok()),
        );
    }
}

impl Object for Secret {
    const RESOURCE: &'static str = "secrets";
    const FAMILIES: &'static [Family] = &[
        gauge("kube_secret_info", "[STABLE] Information about secret."),
        gauge("kube_secret_type", "[STABLE] Type about secret."),
        gauge("kube_secret_annotations", ANNOTATIONS),
        gauge("kube_secret_labels", LABELS),
        created!("kube_secret_created"),
        gauge(
            "kube_secret_metadata_resource_version",
            "Resource version representing a specific version of secret.",
        ),
        gauge("kube_secret_owner", "Information about the Secret's owner."),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [("namespace", namespace.as_str()), ("secret", name.as_str())];
        out.identify(&labels);
        out.metadata("kube_secret", &labels, &self.metadata, allow);
        out.add("kube_secret_info", &labels, 1.0);
        out.add(
            "kube_secret_type",
            &[
                labels[0],
                labels[1],
                ("type", self.type_.as_deref().unwrap_or("Opaque")),
            ],
            1.0,
        );
        out.some(
            "kube_secret_metadata_resource_version",
            &labels,
            self.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<f64>().ok()),
        );
        out.owners("kube_secret_owner", &labels, self.owner_references());
    }
}

impl Object for k8s_openapi::api::core::v1::Endpoints {
    const RESOURCE: &'static str = "endpoints";
    const FAMILIES: &'static [Family] = &[
        gauge("kube_endpoint_info", "[STABLE] Information about endpoint."),
        created!("kube_endpoint_created"),
        gauge("kube_endpoint_annotations", ANNOTATIONS),
        gauge("kube_endpoint_labels", LABELS),
        gauge(
            "kube_endpoint_address",
            "[STABLE] Information about Endpoint available and non available addresses.",
        ),
        gauge(
            "kube_endpoint_ports",
            "[STABLE] (Deprecated since v2.14.0) Information about the Endpoint ports.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        let labels = [
            ("namespace", namespace.as_str()),
            ("endpoint", name.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_endpoint", &labels, &self.metadata, allow);
        out.add("kube_endpoint_info", &labels, 1.0);
        for subset in self.subsets.iter().flatten() {
            for port in subset.ports.iter().flatten() {
                let number = port.port.to_string();
                let protocol = port.protocol.as_deref().unwrap_or("TCP");
                let port_name = port.name.as_deref().unwrap_or("");
                out.add(
                    "kube_endpoint_ports",
                    &[
                        labels[0],
                        labels[1],
                        ("port_name", port_name),
                        ("port_protocol", protocol),
                        ("port_number", &number),
                    ],
                    1.0,
                );
                for (addresses, ready) in [
                    (&subset.addresses, "true"),
                    (&subset.not_ready_addresses, "false"),
                ] {
                    for address in addresses.iter().flatten() {
                        out.add(
                            "kube_endpoint_address",
                            &[
                                labels[0],
                                labels[1],
                                ("port_protocol", protocol),
                                ("port_number", &number),
                                ("port_name", port_name),
                                ("ip", &address.ip),
                                ("ready", ready),
                            ],
                            1.0,
                        );
                    }
                }
            }
        }
    }
}

impl Object for k8s_openapi::api::discovery::v1::EndpointSlice {
    const RESOURCE: &'static str = "endpointslices";
    const FAMILIES: &'static [Family] = &[
        gauge(
            "kube_endpointslice_info",
            "Information about endpointslice.",
        ),
        gauge("kube_endpointslice_created", "Unix creation timestamp"),
        gauge(
            "kube_endpointslice_endpoints_hints",
            "Topology routing hints attached to endpoints",
        ),
        gauge(
            "kube_endpointslice_endpoints",
            "Endpoints attached to the endpointslice.",
        ),
        gauge(
            "kube_endpointslice_ports",
            "Ports attached to the endpointslice.",
        ),
        gauge("kube_endpointslice_annotations", ANNOTATIONS),
        gauge(
            "kube_endpointslice_labels",
            "Kubernetes labels converted to Prometheus labels.",
        ),
    ];

    fn render(&self, out: &mut Lines, allow: &Allow) {
        let (namespace, name) = (self.namespace().unwrap_or_default(), self.name_any());
        // kube-state-metrics puts the slice's name before its namespace
        let labels = [
            ("endpointslice", name.as_str()),
            ("namespace", namespace.as_str()),
        ];
        out.identify(&labels);
        out.metadata("kube_endpointslice", &labels, &self.metadata, allow);
        out.add(
            "kube_endpointslice_info",
            &[labels[0], labels[1], ("addresstype", &self.address_type)],
            1.0,
        );
        let flag = |value: Option<bool>| match value {
            Some(true) => "true",
            Some(false) => "false",
            None => "",
        };
        for endpoint in &self.endpoints {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            let target = endpoint.target_ref.as_ref();
            for address in &endpoint.addresses {
                out.add(
                    "kube_endpointslice_endpoints",
                    &[
                        labels[0],
                        labels[1],
                        ("ready", flag(conditions.ready)),
                        ("serving", flag(conditions.serving)),
                        ("hostname", endpoint.hostname.as_deref().unwrap_or("")),
                        ("terminating", flag(conditions.terminating)),
                        (
                            "targetref_kind",
                            target.and_then(|t| t.kind.as_deref()).unwrap_or(""),
                        ),
                        (
                            "targetref_name",
                            target.and_then(|t| t.name.as_deref()).unwrap_or(""),
                        ),
                        (
                            "targetref_namespace",
                            target.and_then(|t| t.namespace.as_deref()).unwrap_or(""),
                        ),
                        (
                            "endpoint_nodename",
                            endpoint.node_name.as_deref().unwrap_or(""),
                        ),
                        ("endpoint_zone", endpoint.zone.as_deref().unwrap_or("")),
                        ("address", address),
                    ],
                    1.0,
                );
            }
            let zones = endpoint
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.clone())
                .unwrap_or_default();
            if let Some(first) = endpoint.addresses.first() {
                for zone in &zones {
                    out.add(
                        "kube_endpointslice_endpoints_hints",
                        &[
                            labels[0],
                            labels[1],
                            ("address", first),
                            ("for_zone", &zone.name),
                        ],
                        1.0,
                    );
                }
            }
        }
        for port in self.ports.iter().flatten() {
            let number = port.port.map(|p| p.to_string()).unwrap_or_default();
            out.add(
                "kube_endpointslice_ports",
                &[
                    labels[0],
                    labels[1],
                    ("port_name", port.name.as_deref().unwrap_or("")),
                    ("port_protocol", port.protocol.as_deref().unwrap_or("")),
                    ("port_number", &number),
                ],
                1.0,
            );
        }
    }
}

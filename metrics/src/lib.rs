//! kelson-metrics: the Prometheus exporters Kelson runs, with the metric names, help, types and
//! labels of the exporters SREs already scrape, so existing dashboards and alerts work.
//!
//! Start at [`node`], the node_exporter-compatible exporter every node agent serves (default
//! `:9100/metrics`; also `kelson node-exporter` on its own). [`exposition`] writes and parses
//! the text format 0.0.4 the exporters serve, and [`http`] serves a render function.
//! [`state`] is the kube-state-metrics-compatible cluster-state exporter `kelson server` serves
//! (default `:8080/metrics`; also `kelson state-metrics --kubeconfig` against any cluster).
//! [`probe`] answers blackbox_exporter-style `/probe` requests beside the node exporter.

pub mod exposition;
pub mod http;
pub mod node;
pub mod probe;
pub mod state;

//! Kelson's node agent. [`agent`] is the kubelet on a real container runtime: it registers the
//! node ([`node`]), renews its Lease and runs the pods bound to it through containerd's CRI
//! ([`cri`]), one worker per pod ([`pods`]). Pod status is built by [`status`], which the
//! [`hollow`] nodes — many simulated kubelets over a fake runtime — share, so simulation and
//! reality cannot drift apart. Start with [`agent::run`].

pub mod agent;
pub mod cadvisor;
pub mod cri;
pub mod eviction;
pub mod hollow;
pub mod host;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod preflight;
pub mod server;
pub mod static_pods;
pub mod stats;
pub mod status;
pub mod translate;

//! Kelson's node agent. Today: node registration and Lease heartbeats ([`node`]), the pod status
//! a kubelet reports ([`status`]), and [`hollow`] nodes that run the same logic over a fake
//! runtime for simulation at scale. The containerd (CRI) runtime comes next.

pub mod hollow;
pub mod node;
pub mod status;

//! Helpers shared by every component that talks to the Kubernetes API as a client (scheduler,
//! controllers, kubelet): [`events`] publishing, CronJob [`cron`] schedules, [`quantity`] and [`duration`] parsing, [`selector`] matching on typed label selectors,
//! [`pod`] and [`node`] state as Kubernetes defines it, the HTTP [`proxy`] with upgrades, Lease-based [`leader`] election and the host's [`net`] address.

pub mod client_metrics;
pub mod cron;
pub mod duration;
pub mod events;
pub mod leader;
pub mod ndjson;
pub mod net;
pub mod node;
pub mod pod;
pub mod proxy;
pub mod quantity;
pub mod quota;
pub mod selector;
pub mod trace;

//! Kelson's scheduler: assigns unscheduled pods of `default-scheduler` to nodes.
//!
//! [`plan`] holds the decision as pure, tested functions (filters with kube-scheduler's reasons,
//! scores, selection); [`scheduler`] is the loop around it (watch, queue, assume, bind, report
//! unschedulable pods); [`metrics`] counts what it does as kube-scheduler does. It is an
//! ordinary API client and runs inside `kelson server` under
//! leader election.

pub mod metrics;
pub mod plan;
pub mod scheduler;

pub use scheduler::{Config, run};

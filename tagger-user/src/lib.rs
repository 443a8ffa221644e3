//! tagger: keeps chosen requests inside a lane (e.g. `gray`) along the whole
//! call chain, for apps in any language, with no change to them.
//!
//! The kernel programs (`tagger-ebpf`) tie each connection to the pod that
//! opened it and send connections to managed services to the node proxy
//! ([`proxy`]), which decides each request's lane ([`routing`], [`rules`]) and
//! forwards it to an endpoint of that lane. See ARCHITECTURE.md.
pub mod admin;
pub mod cgroup;
pub mod cli;
#[cfg(test)]
mod cli_tests;
pub mod config;
pub mod controller;
#[cfg(test)]
mod controller_tests;
pub mod ctl;
pub mod daemon;
pub mod ebpf;
pub mod flows;
pub mod fuzzing;
pub mod golang;
pub mod handover;
pub mod kubernetes;
pub mod localcluster;
pub mod metrics;
pub mod procs;
pub mod propagation;
pub mod proxy;
pub mod routing;
pub mod rules;
pub mod source;
pub mod state;

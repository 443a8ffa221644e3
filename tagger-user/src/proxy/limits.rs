//! How many proxied connections may be open: in all, and from one pod. A
//! connection over either bound is refused with a clear answer and closed
//! at once, so that a pod opening connections without end (a bug, a flood)
//! takes neither the proxy's memory nor the other pods' share of it.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use serde::Serialize;

use crate::config::LimitsSpec;

/// Why a connection was not admitted, with the bound it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the proxy holds its maximum of {limit} connections")]
    Total { limit: usize },
    #[error("this pod holds its maximum of {limit} connections")]
    Pod { limit: usize },
}

/// Open connections in all and per source pod (by cgroup id), and what
/// was refused and cut: what `config-dump` shows under `proxy`.
#[derive(Debug, Default)]
pub struct ConnectionGate {
    open: AtomicUsize,
    /// Connections admitted since start.
    admitted: AtomicU64,
    per_pod: Mutex<HashMap<u64, usize>>,
    refused_total: AtomicU64,
    refused_pod: AtomicU64,
    header_timeouts: AtomicU64,
}

/// Holds a connection's place; gives it back when dropped.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<ConnectionGate>,
    pod: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct GateStats {
    pub connections_open: usize,
    pub connections_total: u64,
    pub refused_over_total_limit: u64,
    pub refused_over_pod_limit: u64,
    pub closed_by_header_read_timeout: u64,
}

impl ConnectionGate {
    /// Admits a connection from `pod` unless a bound is reached.
    pub fn admit(self: &Arc<Self>, pod: u64, limits: &LimitsSpec) -> Result<Admitted, Refusal> {
        let mut per_pod = self.per_pod.lock().expect("connection gate lock");
        if self.open.load(Ordering::Relaxed) >= limits.max_connections {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Total {
                limit: limits.max_connections,
            });
        }
        let count = per_pod.entry(pod).or_default();
        if *count >= limits.max_connections_per_pod {
            self.refused_pod.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Pod {
                limit: limits.max_connections_per_pod,
            });
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            gate: self.clone(),
            pod,
        })
    }

    pub fn header_timed_out(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> GateStats {
        GateStats {
            connections_open: self.open.load(Ordering::Relaxed),
            connections_total: self.admitted.load(Ordering::Relaxed),
            refused_over_total_limit: self.refused_total.load(Ordering::Relaxed),
            refused_over_pod_limit: self.refused_pod.load(Ordering::Relaxed),
            closed_by_header_read_timeout: self.header_timeouts.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_pod = self.gate.per_pod.lock().expect("connection gate lock");
        if let Some(count) = per_pod.get_mut(&self.pod) {
            *count -= 1;
            if *count == 0 {
                // Pods come and go: keep no entry for one with nothing open.
                per_pod.remove(&self.pod);
            }
        }
        self.gate.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_in_all_and_per_pod() {
        let limits = LimitsSpec {
            max_connections: 4,
            max_connections_per_pod: 2,
            ..LimitsSpec::default()
        };
        let gate = Arc::new(ConnectionGate::default());
        // (pod, expected outcome) in order; `held` keeps the admitted ones.
        let mut held = Vec::new();
        let steps: [(u64, Result<(), Refusal>); 7] = [
            (1, Ok(())),
            (1, Ok(())),
            (1, Err(Refusal::Pod { limit: 2 })),
            (2, Ok(())),
            (3, Ok(())),
            (4, Err(Refusal::Total { limit: 4 })),
            (2, Err(Refusal::Total { limit: 4 })),
        ];
        for (i, (pod, want)) in steps.into_iter().enumerate() {
            let got = gate.admit(pod, &limits);
            assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want, "step {i}");
            held.extend(got.ok());
        }
        assert_eq!(gate.stats().connections_open, 4);
        assert_eq!(gate.stats().refused_over_pod_limit, 1);
        assert_eq!(gate.stats().refused_over_total_limit, 2);
        // A connection of pod 1 closes: pod 1 and the total have room again.
        drop(held.remove(0));
        assert!(gate.admit(1, &limits).is_ok_and(|a| {
            held.push(a);
            true
        }));
        held.clear();
        assert_eq!(gate.stats().connections_open, 0);
        assert!(gate.per_pod.lock().unwrap().is_empty(), "no entry is kept");
    }
}

//! Where the state model's input comes from. A source sends whole
//! [`Inventory`]s on a watch channel whenever what it knows changes: the
//! daemon never polls, and never sees half an update. The first one is sent
//! when the source knows everything once (the file read, every Kubernetes
//! list done); until then the daemon waits.
//!
//! | source | what it reads |
//! |--------|---------------|
//! | [`file`] | the local cluster file and the placement the local cluster wrote |
//! | [`kube`] | the Kubernetes API (Services, EndpointSlices, Pods, Namespaces, `TrafficLane`, `TrafficRule`) and this node's kubelet cgroups |
pub mod file;
pub mod kube;

use std::{future::Future, sync::Arc};

use tokio::sync::watch;

use crate::state::Inventory;

/// What a source sends: `None` until it has a first whole inventory.
pub type Updates = watch::Sender<Option<Arc<Inventory>>>;

/// A producer of inventories.
pub trait Source: Send + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Sends an inventory on `updates` each time what the source knows
    /// changes, until every receiver is gone. An error before the first
    /// inventory means the daemon cannot start; later ones are the
    /// source's to log and retry (a bad edit keeps the state in force).
    fn run(self, updates: Updates) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Sends `inventory` unless it is what the receivers have already.
pub fn publish(updates: &Updates, inventory: Inventory) {
    updates.send_if_modified(|current| {
        if current.as_deref() == Some(&inventory) {
            return false;
        }
        *current = Some(Arc::new(inventory));
        true
    });
}

#[cfg(test)]
mod file_tests;

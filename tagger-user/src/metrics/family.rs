//! A map from label values to a metric, read without a lock.
//!
//! The proxy handles more than 10k requests a second on two cores; every
//! request bumps a counter chosen by its labels (service, lane, ...). Reads
//! go through an `ArcSwap` of the whole map (no lock, no shared write);
//! only a label combination seen for the first time takes the insert lock
//! and publishes a copy of the map with it. Combinations are few (services
//! x lanes x reasons) and appear early, so copies are rare and small.
use std::{
    hash::Hash,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use hashbrown::{Equivalent, HashMap};

pub struct Family<K, V> {
    map: ArcSwap<HashMap<K, Arc<V>>>,
    insert: Mutex<()>,
    make: fn() -> V,
}

impl<K: Hash + Eq + Clone, V> Family<K, V> {
    /// `make` builds the metric of a new label combination.
    pub fn new(make: fn() -> V) -> Self {
        Self {
            map: ArcSwap::from_pointee(HashMap::new()),
            insert: Mutex::new(()),
            make,
        }
    }

    /// Runs `f` on the metric of `key`, creating it (from `owned()`) the
    /// first time. `key` is a borrowed form, so a request that finds its
    /// metric allocates nothing.
    pub fn with<Q, R>(&self, key: &Q, owned: impl FnOnce() -> K, f: impl FnOnce(&V) -> R) -> R
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        if let Some(metric) = self.map.load().get(key) {
            return f(metric);
        }
        let _guard = self.insert.lock().expect("metric family insert lock");
        // Another thread may have inserted it while we waited.
        let current = self.map.load_full();
        if let Some(metric) = current.get(key) {
            return f(metric);
        }
        let mut next = HashMap::clone(&current);
        let metric = Arc::new((self.make)());
        next.insert(owned(), metric.clone());
        self.map.store(Arc::new(next));
        f(&metric)
    }

    /// Every (labels, metric), for a scrape.
    pub fn entries(&self) -> Vec<(K, Arc<V>)> {
        self.map
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

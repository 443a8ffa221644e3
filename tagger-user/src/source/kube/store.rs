//! One kind's objects as the daemon keeps them, fed by a watcher's events.
//! A (re)list, `Init` .. `InitDone`, fills a buffer that replaces the
//! store whole at `InitDone`: until then the store answers as before, so
//! an inventory is never built from half a list.
use std::collections::BTreeMap;

use kube::{Resource, runtime::watcher::Event};

use super::objects::Key;

/// Objects of one kind by `(namespace, name)` (`""` for cluster-scoped).
pub struct Store<V> {
    live: BTreeMap<Key, V>,
    relist: Option<BTreeMap<Key, V>>,
    /// A first list has completed.
    pub synced: bool,
}

impl<V> Default for Store<V> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

fn key_of<K: Resource>(object: &K) -> Option<Key> {
    let meta = object.meta();
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

impl<V: PartialEq> Store<V> {
    /// Applies one event; `convert` says what is kept of an object (`None`:
    /// nothing, and what was kept of it goes). Whether what the store
    /// answers changed.
    pub fn apply<K: Resource>(
        &mut self,
        event: Event<K>,
        convert: impl Fn(&K) -> Option<(Key, V)>,
    ) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                if let (Some(relist), Some((key, value))) = (self.relist.as_mut(), convert(&object))
                {
                    relist.insert(key, value);
                }
                false
            }
            Event::InitDone => {
                let relisted = self.relist.take().unwrap_or_default();
                let changed = !self.synced || relisted != self.live;
                self.live = relisted;
                self.synced = true;
                changed
            }
            Event::Apply(object) => match convert(&object) {
                Some((key, value)) => {
                    let changed = self.live.get(&key) != Some(&value);
                    self.live.insert(key, value);
                    changed
                }
                None => key_of(&object).is_some_and(|key| self.live.remove(&key).is_some()),
            },
            Event::Delete(object) => {
                key_of(&object).is_some_and(|key| self.live.remove(&key).is_some())
            }
        }
    }

    pub fn get(&self, key: &Key) -> Option<&V> {
        self.live.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.live.iter()
    }
}

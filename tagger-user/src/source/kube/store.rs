//! One kind's objects as the daemon keeps them, fed by a watcher's events.
//! A (re)list, `Init` .. `InitDone`, fills a buffer that replaces the
//! store whole at `InitDone`: until then the store answers as before, so
//! an inventory is never built from half a list. A kind watched in each
//! managed namespace apart ([`Store::apply_in`]) is relisted and replaced
//! one namespace at a time.
use std::collections::{BTreeMap, HashMap, HashSet};

use kube::{Resource, runtime::watcher::Event};

use super::objects::Key;

/// Objects of one kind by `(namespace, name)` (`""` for cluster-scoped).
pub struct Store<V> {
    live: BTreeMap<Key, V>,
    relist: Option<BTreeMap<Key, V>>,
    /// A first list has completed.
    pub synced: bool,
    /// Relists of one namespace under way, by namespace.
    scoped_relists: HashMap<String, BTreeMap<Key, V>>,
    /// Namespaces whose own watch has listed once.
    synced_in: HashSet<String>,
}

impl<V> Default for Store<V> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            relist: None,
            synced: false,
            scoped_relists: HashMap::new(),
            synced_in: HashSet::new(),
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

    /// Applies one event of a watch of namespace `scope` only: its
    /// (re)list replaces that namespace's objects whole, and no other's.
    pub fn apply_in<K: Resource>(
        &mut self,
        scope: &str,
        event: Event<K>,
        convert: impl Fn(&K) -> Option<(Key, V)>,
    ) -> bool {
        match event {
            Event::Init => {
                self.scoped_relists
                    .insert(scope.to_string(), BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                if let (Some(relist), Some((key, value))) =
                    (self.scoped_relists.get_mut(scope), convert(&object))
                {
                    relist.insert(key, value);
                }
                false
            }
            Event::InitDone => {
                let relisted = self.scoped_relists.remove(scope).unwrap_or_default();
                let before = self.take_namespace(scope);
                let changed = !self.synced_in.contains(scope) || relisted != before;
                self.live.extend(relisted);
                self.synced_in.insert(scope.to_string());
                changed
            }
            event => self.apply(event, convert),
        }
    }

    /// Whether the watch of namespace `scope` has listed once.
    pub fn synced_in(&self, scope: &str) -> bool {
        self.synced_in.contains(scope)
    }

    /// Drops what a watch of namespace `scope` brought (it is no longer
    /// watched); whether the store answered anything of it.
    pub fn forget(&mut self, scope: &str) -> bool {
        self.scoped_relists.remove(scope);
        let synced = self.synced_in.remove(scope);
        let before = self.take_namespace(scope);
        synced || !before.is_empty()
    }

    fn take_namespace(&mut self, scope: &str) -> BTreeMap<Key, V> {
        let keys: Vec<Key> = self
            .live
            .range((scope.to_string(), String::new())..)
            .take_while(|((ns, _), _)| ns == scope)
            .map(|(key, _)| key.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| self.live.remove_entry(&key))
            .collect()
    }

    pub fn get(&self, key: &Key) -> Option<&V> {
        self.live.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.live.iter()
    }
}

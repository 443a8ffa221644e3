//! The context store carried across a daemon handover: the requests in
//! flight when the new daemon takes over were read (and their contexts
//! learnt) by the old one, and their outbound calls reach the new one.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{CONTEXT_TTL, ContextStore, InboundContext, ThreadEntry};

/// An [`InboundContext`] as bytes (header values need not be UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextRecord {
    pub lane: Option<String>,
    pub passthrough: Vec<(String, Vec<u8>)>,
    pub ids: Vec<String>,
}

impl From<&InboundContext> for ContextRecord {
    fn from(context: &InboundContext) -> Self {
        Self {
            lane: context.lane.clone(),
            passthrough: context
                .passthrough
                .iter()
                .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
                .collect(),
            ids: context.ids.clone(),
        }
    }
}

impl ContextRecord {
    fn into_context(self) -> InboundContext {
        InboundContext {
            lane: self.lane,
            passthrough: self
                .passthrough
                .into_iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        HeaderValue::from_bytes(&value).ok()?,
                    ))
                })
                .collect(),
            ids: self.ids,
        }
    }
}

/// One thread's newest inbound request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRecord {
    pub pid_tgid: u64,
    pub seq: u64,
    /// Header bytes still being gathered (the block had not ended).
    pub partial: Vec<u8>,
    /// `None`: still gathering; `Some(None)`: done, nothing to carry.
    pub context: Option<Option<ContextRecord>>,
    pub age_ms: u64,
}

/// A forwarded id and the context it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRecord {
    pub id: String,
    pub context: ContextRecord,
    pub age_ms: u64,
}

/// Everything the store holds that is younger than its TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSnapshot {
    pub threads: Vec<ThreadRecord>,
    pub ids: Vec<IdRecord>,
}

impl ContextStore {
    /// The live contexts, to hand to a successor.
    pub fn export(&self) -> StoreSnapshot {
        let now = Instant::now();
        let age = |at: Instant| now.duration_since(at).as_millis() as u64;
        let threads = self.threads.lock().expect("threads lock");
        let threads = threads
            .iter()
            .filter(|(_, e)| now.duration_since(e.updated) < CONTEXT_TTL)
            .map(|(&pid_tgid, e)| ThreadRecord {
                pid_tgid,
                seq: e.seq,
                partial: e.bytes.clone(),
                context: e
                    .context
                    .as_ref()
                    .map(|c| c.as_deref().map(ContextRecord::from)),
                age_ms: age(e.updated),
            })
            .collect();
        let ids = self.ids.lock().expect("ids lock");
        let ids = ids
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) < CONTEXT_TTL)
            .map(|(id, (context, at))| IdRecord {
                id: id.clone(),
                context: ContextRecord::from(context.as_ref()),
                age_ms: age(*at),
            })
            .collect();
        StoreSnapshot { threads, ids }
    }

    /// Takes a predecessor's contexts. A thread this store already knows
    /// a newer request of keeps its own.
    pub fn import(&self, snapshot: StoreSnapshot) {
        let now = Instant::now();
        let at = |age_ms: u64| {
            now.checked_sub(Duration::from_millis(age_ms))
                .unwrap_or(now)
        };
        {
            let mut threads = self.threads.lock().expect("threads lock");
            for record in snapshot.threads {
                if threads
                    .get(&record.pid_tgid)
                    .is_some_and(|mine| mine.seq >= record.seq)
                {
                    continue;
                }
                threads.insert(
                    record.pid_tgid,
                    ThreadEntry {
                        seq: record.seq,
                        bytes: record.partial,
                        context: record
                            .context
                            .map(|c| c.map(|c| Arc::new(c.into_context()))),
                        updated: at(record.age_ms),
                    },
                );
            }
        }
        let mut ids = self.ids.lock().expect("ids lock");
        for record in snapshot.ids {
            ids.entry(record.id)
                .or_insert_with(|| (Arc::new(record.context.into_context()), at(record.age_ms)));
        }
        drop(ids);
        self.delivered.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{propagation::InboundBytes, state::Settings};

    fn settings() -> Settings {
        Settings {
            lane_header: HeaderName::from_static("x-lane"),
            passthrough_headers: vec![],
            body_match_limit: 1024,
            limits: Default::default(),
        }
    }

    fn event(pid_tgid: u64, seq: u64, data: &[u8]) -> InboundBytes<'_> {
        InboundBytes {
            pid_tgid,
            seq,
            flags: tagger_common::EVENT_FIRST,
            data,
        }
    }

    #[test]
    fn contexts_survive_export_and_import() {
        let settings = settings();
        let old = ContextStore::default();
        old.on_inbound(
            event(
                1,
                5,
                b"GET / HTTP/1.1\r\nx-lane: gray\r\nx-request-id: r-1\r\n\r\n",
            ),
            &settings,
        );
        // A head not yet whole when the handover comes.
        old.on_inbound(event(2, 9, b"GET / HTTP/1.1\r\nx-la"), &settings);
        let snapshot = old.export();
        assert_eq!(snapshot.threads.len(), 2);
        // Through the wire format.
        let snapshot: StoreSnapshot =
            serde_json::from_slice(&serde_json::to_vec(&snapshot).unwrap()).unwrap();

        let new = ContextStore::default();
        new.import(snapshot);
        let context = new.lookup(1, 5).flatten().expect("thread 1's context");
        assert_eq!(context.lane.as_deref(), Some("gray"));
        assert_eq!(context.ids.len(), 1, "{context:?}");
        assert_eq!(
            new.id_context(&context.ids)
                .and_then(|c| c.lane.clone())
                .as_deref(),
            Some("gray")
        );
        // The rest of thread 2's head arrives at the new daemon.
        new.on_inbound(
            InboundBytes {
                pid_tgid: 2,
                seq: 9,
                flags: 0,
                data: b"ne: blue\r\n\r\n",
            },
            &settings,
        );
        let context = new.lookup(2, 9).flatten().expect("thread 2's context");
        assert_eq!(context.lane.as_deref(), Some("blue"));
    }

    #[test]
    fn a_newer_request_the_successor_saw_wins() {
        let settings = settings();
        let old = ContextStore::default();
        old.on_inbound(
            event(1, 5, b"GET / HTTP/1.1\r\nx-lane: gray\r\n\r\n"),
            &settings,
        );
        let new = ContextStore::default();
        new.on_inbound(event(1, 6, b"GET / HTTP/1.1\r\n\r\n"), &settings);
        new.import(old.export());
        assert_eq!(new.lookup(1, 5), None);
        assert!(new.lookup(1, 6).is_some());
    }
}

//! Propagation through unmodified apps: which inbound request caused an
//! outbound one, and what it carried (lane, pass-through headers).
//!
//! Two sources, as DESIGN.md lays out:
//! * **thread**: the kernel saw a pod thread read an inbound request and then
//!   write this outbound request on a redirected socket (a [`RequestTag`]);
//!   its bytes reach [`ContextStore::on_inbound`] through a ring buffer.
//! * **id**: the outbound request carries an id the app forwarded
//!   (traceparent, x-request-id, b3) that an inbound request carried with a
//!   lane. Because the lane header travels on the wire to every hop, each
//!   node learns id -> lane from the inbound requests of its own pods; no
//!   node-to-node state is needed.
//!
//! Where correlation cannot be trusted (several requests open on one thread,
//! as in event loops; a context that never arrived) the answer says so and
//! the caller falls back to the safe default.
pub mod events;
pub mod scan;
pub mod snapshot;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use tagger_common::{
    EVENT_FIELDS, EVENT_FIRST, MAX_CAPTURE_PER_REQUEST, RequestTag, TAG_CONCURRENT, TAG_GOROUTINE,
    TAG_UNSEEN, TAG_UNTRUSTED,
};
use tokio::sync::Notify;

pub use scan::InboundContext;
use scan::{Scan, Wanted};

use crate::{config::LANE_HEADER_ALIAS, state::Settings};

/// Contexts and ids older than this are not applied.
const CONTEXT_TTL: Duration = Duration::from_secs(30);
/// How long the proxy waits for the context of a request that the kernel
/// tagged. The ring buffer is drained on demand, so this is only reached
/// when the event was lost.
const DELIVERY_WAIT: Duration = Duration::from_millis(20);
const MAX_THREADS: usize = 65_536;
/// Put before an HTTP/2 stream's header lines (`EVENT_FIELDS`).
const FIELDS_REQUEST_LINE: &[u8] = b"POST / HTTP/1.1\r\n";
const MAX_IDS: usize = 65_536;

/// How far a decision could trust what it inherited. Shown in `tagger flows`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Correlation {
    /// Nothing to correlate: the request was not caused by an inbound one.
    #[default]
    None,
    /// The inbound request is known for sure.
    Trusted,
    /// An inbound request may have caused this one but which one is not
    /// certain; nothing was inherited.
    Untrusted,
}

impl std::fmt::Display for Correlation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "-",
            Self::Trusted => "trusted",
            Self::Untrusted => "untrusted",
        })
    }
}

/// What an outbound request inherits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inherited {
    pub context: Option<Arc<InboundContext>>,
    pub source: InheritSource,
    pub correlation: Correlation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InheritSource {
    #[default]
    None,
    /// The thread that read the inbound request wrote this one.
    Thread,
    /// The goroutine that served the inbound request (or one it started)
    /// sent this one (a Go process).
    Goroutine,
    /// The app forwarded a request id the inbound request carried.
    Id,
}

/// One event from the kernel, borrowed from the ring buffer.
#[derive(Debug, Clone, Copy)]
pub struct InboundBytes<'a> {
    pub pid_tgid: u64,
    pub seq: u64,
    pub flags: u32,
    pub data: &'a [u8],
}

#[derive(Debug)]
struct ThreadEntry {
    seq: u64,
    bytes: Vec<u8>,
    /// `Some` once the header block is complete (or known not to be HTTP).
    context: Option<Option<Arc<InboundContext>>>,
    updated: Instant,
}

/// Delivers pending kernel events to the store when asked.
pub trait Pump: Send + Sync {
    fn pump(&self);
}

#[derive(Default)]
pub struct ContextStore {
    threads: Mutex<HashMap<u64, ThreadEntry>>,
    /// When contexts older than `CONTEXT_TTL` were last dropped: threads
    /// and connections come and go (a server that starts a thread per
    /// connection makes a new key each time), so the maps are swept now
    /// and then, not only when full.
    swept: Mutex<Option<Instant>>,
    ids: Mutex<HashMap<String, (Arc<InboundContext>, Instant)>>,
    delivered: Notify,
    pump: OnceLock<Arc<dyn Pump>>,
}

impl std::fmt::Debug for ContextStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (threads, ids) = self.sizes();
        f.debug_struct("ContextStore")
            .field("threads", &threads)
            .field("ids", &ids)
            .finish()
    }
}

impl ContextStore {
    /// Lets the store pull kernel events itself when a context it needs has
    /// not been delivered yet.
    pub fn set_pump(&self, pump: Arc<dyn Pump>) {
        let _ = self.pump.set(pump);
    }

    fn lookup(&self, pid_tgid: u64, seq: u64) -> Option<Option<Arc<InboundContext>>> {
        let threads = self.threads.lock().expect("threads lock");
        let entry = threads.get(&pid_tgid)?;
        if entry.seq == seq {
            entry.context.clone()
        } else {
            None
        }
    }

    /// Whether a sweep is due (every `CONTEXT_TTL`); notes it as done.
    fn sweep_due(&self, now: Instant) -> bool {
        let mut swept = self.swept.lock().expect("swept lock");
        let last = *swept.get_or_insert(now);
        let due = now.duration_since(last) >= CONTEXT_TTL;
        if due {
            *swept = Some(now);
        }
        due
    }

    /// Takes one kernel event: the start or a continuation of an inbound
    /// request read by a pod thread.
    pub fn on_inbound(&self, event: InboundBytes<'_>, settings: &Settings) {
        let now = Instant::now();
        let completed = {
            let mut threads = self.threads.lock().expect("threads lock");
            if threads.len() >= MAX_THREADS || self.sweep_due(now) {
                threads.retain(|_, e| now.duration_since(e.updated) < CONTEXT_TTL);
                let mut ids = self.ids.lock().expect("ids lock");
                ids.retain(|_, (_, at)| now.duration_since(*at) < CONTEXT_TTL);
            }
            if event.flags & EVENT_FIRST != 0 {
                // An HTTP/2 stream's fields come as header lines: a request
                // line before them makes them the block the scanner reads.
                let bytes = match event.flags & EVENT_FIELDS {
                    0 => Vec::new(),
                    _ => FIELDS_REQUEST_LINE.to_vec(),
                };
                threads.insert(
                    event.pid_tgid,
                    ThreadEntry {
                        seq: event.seq,
                        bytes,
                        context: None,
                        updated: now,
                    },
                );
            }
            let Some(entry) = threads.get_mut(&event.pid_tgid) else {
                return;
            };
            if entry.seq != event.seq || entry.context.is_some() {
                return; // a stale continuation, or the headers are done
            }
            entry.bytes.extend_from_slice(event.data);
            entry.updated = now;
            let wanted = Wanted {
                lane_header: &settings.lane_header,
                lane_alias: LANE_HEADER_ALIAS,
                passthrough: &settings.passthrough_headers,
            };
            match scan::scan(&entry.bytes, &wanted) {
                Scan::Partial if entry.bytes.len() < MAX_CAPTURE_PER_REQUEST as usize => return,
                // Headers longer than the capture: we cannot know them all.
                Scan::Partial | Scan::NotHttp => entry.context = Some(None),
                Scan::Complete(context) => entry.context = Some(Some(Arc::new(context))),
            }
            entry.bytes = Vec::new();
            entry.context.clone().flatten()
        };
        if let Some(context) = completed
            && !context.is_empty()
            && !context.ids.is_empty()
        {
            let mut ids = self.ids.lock().expect("ids lock");
            if ids.len() >= MAX_IDS {
                ids.retain(|_, (_, at)| now.duration_since(*at) < CONTEXT_TTL);
            }
            for id in &context.ids {
                ids.insert(id.clone(), (context.clone(), now));
            }
        }
        self.delivered.notify_waiters();
    }

    /// The context of the inbound request a thread was serving, waiting a
    /// little for the ring buffer if the kernel is ahead of it.
    async fn thread_context(&self, pid_tgid: u64, seq: u64) -> Option<Option<Arc<InboundContext>>> {
        let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
        loop {
            let notified = self.delivered.notified();
            if let Some(context) = self.lookup(pid_tgid, seq) {
                return Some(context);
            }
            if let Some(pump) = self.pump.get() {
                pump.pump();
                if let Some(context) = self.lookup(pid_tgid, seq) {
                    return Some(context);
                }
            }
            // Another task may be draining: wait for it, or poll again soon.
            let tick = (tokio::time::Instant::now() + Duration::from_millis(1)).min(deadline);
            let _ = tokio::time::timeout_at(tick, notified).await;
            if tokio::time::Instant::now() >= deadline {
                return self.lookup(pid_tgid, seq);
            }
        }
    }

    fn id_context(&self, ids: &[String]) -> Option<Arc<InboundContext>> {
        let known = self.ids.lock().expect("ids lock");
        ids.iter().find_map(|id| {
            let (context, at) = known.get(id)?;
            (at.elapsed() < CONTEXT_TTL).then(|| context.clone())
        })
    }

    /// What an outbound request inherits: `tag` is what the kernel recorded
    /// when the app wrote it, `headers` are the request's own.
    pub async fn inherit(
        &self,
        tag: Option<RequestTag>,
        headers: &HeaderMap,
        now_ns: u64,
    ) -> Inherited {
        let fresh =
            |t: &RequestTag| now_ns.saturating_sub(t.written_ns) < CONTEXT_TTL.as_nanos() as u64;
        let unseen = tag.is_some_and(|t| t.flags & (TAG_UNSEEN | TAG_UNTRUSTED) != 0 && fresh(&t));
        let tag = tag.filter(|t| t.seq != 0 && fresh(t));
        let ids: Vec<String> = headers
            .iter()
            .filter_map(|(name, value)| scan::request_id(name, value.to_str().ok()?))
            .collect();
        let by_id = || {
            if ids.is_empty() {
                return None;
            }
            // The id may have come in a moment ago: deliver pending events
            // before concluding it is unknown.
            let context = self.id_context(&ids).or_else(|| {
                self.pump.get()?.pump();
                self.id_context(&ids)
            });
            context.map(|context| Inherited {
                context: Some(context),
                source: InheritSource::Id,
                correlation: Correlation::Trusted,
            })
        };
        let untrusted = Inherited {
            context: None,
            source: InheritSource::None,
            correlation: Correlation::Untrusted,
        };
        if unseen {
            // The process had just left leaf mode (the request that caused
            // this one was not captured), or the kernel could not tell the
            // cause (see TAG_UNTRUSTED).
            return by_id().unwrap_or(untrusted);
        }
        let Some(tag) = tag else {
            return by_id().unwrap_or_default();
        };
        if tag.flags & TAG_CONCURRENT != 0 {
            // Several requests open on the writing thread: only a forwarded
            // id can say which one caused this.
            return by_id().unwrap_or(untrusted);
        }
        match self.thread_context(tag.pid_tgid, tag.seq).await {
            Some(context) => Inherited {
                context: context.filter(|c| !c.is_empty()),
                source: if tag.flags & TAG_GOROUTINE != 0 {
                    InheritSource::Goroutine
                } else {
                    InheritSource::Thread
                },
                correlation: Correlation::Trusted,
            },
            // The kernel tagged it but the bytes never came (ring buffer full).
            None => by_id().unwrap_or(untrusted),
        }
    }

    /// Threads and ids held, for the config dump.
    pub fn sizes(&self) -> (usize, usize) {
        (
            self.threads.lock().expect("threads lock").len(),
            self.ids.lock().expect("ids lock").len(),
        )
    }
}

#[cfg(test)]
mod tests;

//! Moving the kernel's inbound-request events into the [`ContextStore`].
//!
//! The kernel submits events without waking a reader (a wake-up per event
//! costs more than the event). They are drained at once by the proxy when it
//! needs a context that is not there yet (by thread or by forwarded id),
//! when the kernel wakes the reader because the ring is a quarter full, and
//! once a second, so that a quiet ring's events do not wait long to be
//! counted and aged. Every lookup drains first, so the period decides no
//! answer: it is a wake-up of an idle daemon (each costs ~50-100 us of CPU
//! here, and a timer of 100 ms woke the daemon twenty times a second).
use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use std::os::fd::AsFd;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use super::{ContextStore, InboundBytes, Pump};
use crate::state::StateHandle;

const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// Where a copy of every event goes while a predecessor still serves its
/// last connections (see `handover`); `false` from it stops the copying.
pub type Tee = Box<dyn FnMut(&[u8]) -> bool + Send>;

pub struct EventPump {
    /// `None` once handed to a successor.
    ring: Mutex<Option<RingBuf<MapData>>>,
    contexts: Arc<ContextStore>,
    state: StateHandle,
    tee: Mutex<Option<Tee>>,
    /// After a handover the ring is the successor's: a context this daemon
    /// still needs is asked of it.
    remote: OnceLock<Arc<dyn Pump>>,
}

impl EventPump {
    pub fn new(ring: RingBuf<MapData>, contexts: Arc<ContextStore>, state: StateHandle) -> Self {
        Self {
            ring: Mutex::new(Some(ring)),
            contexts,
            state,
            tee: Mutex::new(None),
            remote: OnceLock::new(),
        }
    }

    /// Copies every event from now on to `tee` as well.
    pub fn set_tee(&self, tee: Tee) {
        *self.tee.lock().expect("tee lock") = Some(tee);
    }

    pub fn clear_tee(&self) {
        *self.tee.lock().expect("tee lock") = None;
    }

    /// Delivers what is in the ring, then lets go of it for good: from now
    /// on `remote` is asked to deliver (the successor drains the ring).
    pub fn hand_over(&self, remote: Arc<dyn Pump>) {
        let mut ring = self.ring.lock().expect("ring lock");
        if let Some(ring) = ring.as_mut() {
            self.drain(ring);
        }
        *ring = None;
        let _ = self.remote.set(remote);
    }

    /// Drains forever: when the kernel says the ring is filling, and
    /// every [`DRAIN_EVERY`]; ends when the ring is handed over.
    pub async fn run(self: Arc<Self>) {
        let fd = match self.ring.lock().expect("ring lock").as_ref() {
            Some(ring) => ring.as_fd().try_clone_to_owned(),
            None => return,
        };
        // SAFETY: `register_with_interest` needs the fd open and the same
        // for the AsyncFd's life: it owns this duplicate.
        let wakeups = fd.and_then(|fd| {
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(std::io::Error::from)
        });
        let wakeups = match wakeups {
            Ok(wakeups) => Some(wakeups),
            Err(error) => {
                warn!(%error, "cannot poll the event ring; draining on a timer only");
                None
            }
        };
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match &wakeups {
                Some(wakeups) => tokio::select! {
                    ready = wakeups.readable() => {
                        if let Ok(mut ready) = ready {
                            ready.clear_ready();
                        }
                    }
                    _ = tick.tick() => {}
                },
                None => {
                    tick.tick().await;
                }
            }
            if self.remote.get().is_some() {
                return;
            }
            self.pump();
        }
    }

    fn drain(&self, ring: &mut RingBuf<MapData>) {
        let snapshot = self.state.load();
        let mut tee = self.tee.lock().expect("tee lock");
        while let Some(item) = ring.next() {
            if let Some(event) = decode(&item) {
                self.contexts.on_inbound(event, &snapshot.settings);
            }
            if let Some(copy) = tee.as_mut()
                && !copy(&item)
            {
                *tee = None;
            }
        }
    }
}

impl Pump for EventPump {
    fn pump(&self) {
        if let Some(remote) = self.remote.get() {
            remote.pump();
            return;
        }
        // One drainer at a time. A caller that finds another draining waits
        // for it (a drain takes microseconds), so that on return every
        // event submitted before the call has been delivered.
        let mut ring = self.ring.lock().expect("ring lock");
        if let Some(ring) = ring.as_mut() {
            self.drain(ring);
        }
    }
}

/// An `InboundEvent` from its bytes (layout in tagger-common).
pub fn decode(bytes: &[u8]) -> Option<InboundBytes<'_>> {
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    };
    let len = u32_at(20)? as usize;
    Some(InboundBytes {
        pid_tgid: u64_at(0)?,
        seq: u64_at(8)?,
        flags: u32_at(24)?,
        data: bytes.get(32..32 + len.min(tagger_common::CAPTURE_BYTES))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_common_layout() {
        let mut bytes = vec![0u8; 32 + tagger_common::CAPTURE_BYTES];
        bytes[0..8].copy_from_slice(&42u64.to_ne_bytes());
        bytes[8..16].copy_from_slice(&7u64.to_ne_bytes());
        bytes[20..24].copy_from_slice(&3u32.to_ne_bytes());
        bytes[24..28].copy_from_slice(&tagger_common::EVENT_FIRST.to_ne_bytes());
        bytes[32..35].copy_from_slice(b"GET");
        let event = decode(&bytes).unwrap();
        assert_eq!(
            (event.pid_tgid, event.seq, event.flags, event.data),
            (42, 7, 1, &b"GET"[..])
        );
        assert!(decode(&bytes[..20]).is_none());
        assert_eq!(std::mem::offset_of!(tagger_common::InboundEvent, data), 32);
        assert_eq!(std::mem::offset_of!(tagger_common::InboundEvent, len), 20);
    }
}

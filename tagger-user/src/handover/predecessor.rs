//! The old daemon's side of a handover: it answers on the handover socket
//! for its whole life, and once a successor has taken over it serves only
//! the connections it already has.
use std::{
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Frame, HandoverError, ListenerRole, Message, Reader, chunks, encode, fds, send};
use crate::{
    ebpf::Datapath,
    procs::Classifier,
    propagation::{
        ContextStore, Pump,
        events::{EventPump, decode},
    },
    state::StateHandle,
};

/// How long this daemon waits for the successor to deliver the events it
/// asks for. Its own ring it drains itself at once; the successor's reply
/// needs another process's thread scheduled, which on a busy node can take
/// longer than the local wait (and a missed context means "untrusted").
/// An answer normally comes back within a millisecond.
const REMOTE_WAIT: Duration = Duration::from_millis(200);
/// ... and, before the successor says it serves (it is still taking this
/// daemon's contexts in), how long a request may wait for it: without the
/// events it has in its ring, the answer would be "untrusted".
const SERVING_WAIT: Duration = Duration::from_secs(1);
/// A write to a successor that does not read is given up after this.
const WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// What the daemon's main loop is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// A successor's programs act now: stop accepting, drain, stay idle.
    TakenOver { pid: u32 },
    /// A successor with other map layouts: fail open, drain, unpin.
    Retired { pid: u32 },
}

/// What is handed over, and what this side must stop or resume.
pub struct Parts {
    pub listeners: Vec<(ListenerRole, OwnedFd)>,
    pub datapath: Arc<Datapath>,
    pub classifier: Arc<Classifier>,
    pub pump: Option<Arc<EventPump>>,
    pub contexts: Arc<ContextStore>,
    pub state: StateHandle,
}

pub struct Predecessor {
    parts: Parts,
    events: mpsc::UnboundedSender<Handed>,
    /// The writer of the session that took over, for `Drained`.
    taken_by: Mutex<Option<Arc<Mutex<UnixStream>>>>,
    done: AtomicBool,
    /// A successor said hello and has not gone away: it may be loading on
    /// the pinned maps right now.
    in_session: AtomicBool,
}

impl Predecessor {
    /// Listens on `path` (replacing a stale socket file) for a successor.
    pub fn listen(
        path: &Path,
        parts: Parts,
    ) -> std::io::Result<(Arc<Self>, mpsc::UnboundedReceiver<Handed>)> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let (events, handed) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            parts,
            events,
            taken_by: Mutex::new(None),
            done: AtomicBool::new(false),
            in_session: AtomicBool::new(false),
        });
        let server = this.clone();
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                // One successor at a time; none after one took over or
                // this daemon began to stop. Such a hello is dropped unread
                // (the successor sees a reset: `Stopping`), and the socket
                // kept until this process exits, so that a successor waits
                // for it to be gone (its pinned maps removed) rather than
                // start beside a daemon still draining.
                for stream in listener.incoming() {
                    if server.done.load(Ordering::SeqCst) {
                        continue;
                    }
                    let Ok(stream) = stream else { continue };
                    let result = server.session(stream);
                    if !server.done.load(Ordering::SeqCst) {
                        server.in_session.store(false, Ordering::SeqCst);
                    }
                    if let Err(error) = result {
                        warn!(%error, "handover to a successor failed; this daemon goes on serving");
                    }
                }
            })?;
        Ok((this, handed))
    }

    /// This daemon stops with no successor (SIGINT, or SIGTERM with none
    /// in time): no successor is taken from here on. Returns whether one is
    /// in the middle of a handover; it may be loading on the pinned maps,
    /// so they must not be removed (found by the bench: a daemon started
    /// while the old one stopped failed to pin its maps).
    pub fn close(&self) -> bool {
        self.done.store(true, Ordering::SeqCst);
        self.in_session.load(Ordering::SeqCst)
    }

    /// The connections are finished: the successor hears it and stops
    /// copying events here.
    pub fn drained(&self) {
        if let Some(writer) = self.taken_by.lock().expect("taken lock").take() {
            let stream = writer.lock().expect("writer lock");
            let _ = send(&stream, &Frame::Message(Message::Drained));
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn session(&self, stream: UnixStream) -> Result<(), HandoverError> {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let mut reader = Reader::new(stream.try_clone()?);
        let writer = Arc::new(Mutex::new(stream));
        let Message::Hello { layout, pid } = reader.message("hello")? else {
            return Ok(());
        };
        self.in_session.store(true, Ordering::SeqCst);
        let datapath = &self.parts.datapath;
        let welcome = Message::Welcome {
            layout: datapath.pins().layout.clone(),
            generation: datapath.generation(),
            pid: std::process::id(),
            listeners: self.parts.listeners.iter().map(|(role, _)| *role).collect(),
        };
        let fds: Vec<_> = self
            .parts
            .listeners
            .iter()
            .map(|(_, fd)| fd.as_fd())
            .collect();
        fds::send_with_fds(
            &writer.lock().expect("writer lock"),
            &encode(&Frame::Message(welcome)),
            &fds,
        )?;
        info!(successor = pid, %layout, "a successor is taking over");
        match reader.message("freeze or retire")? {
            Message::Freeze => {}
            Message::Retire => {
                self.done.store(true, Ordering::SeqCst);
                let _ = self.events.send(Handed::Retired { pid });
                send(
                    &writer.lock().expect("writer lock"),
                    &Frame::Message(Message::Retired),
                )?;
                *self.taken_by.lock().expect("taken lock") = Some(writer);
                return Ok(());
            }
            other => {
                return Err(HandoverError::Unexpected {
                    expected: "freeze",
                    got: Frame::Message(other),
                });
            }
        }
        // From here until `TakeOver` the successor prepares: if it goes
        // away, this daemon takes its maps back.
        datapath.freeze();
        self.parts.classifier.pause(true);
        let taken = (|| {
            send(
                &writer.lock().expect("writer lock"),
                &Frame::Message(Message::Frozen {
                    generation: datapath.generation(),
                }),
            )?;
            match reader.message("take over")? {
                Message::TakeOver => Ok(()),
                other => Err(HandoverError::Unexpected {
                    expected: "take over",
                    got: Frame::Message(other),
                }),
            }
        })();
        if let Err(error) = taken {
            datapath.thaw();
            self.parts.classifier.pause(false);
            return Err(error);
        }
        self.done.store(true, Ordering::SeqCst);
        let _ = self.events.send(Handed::TakenOver { pid });
        let remote = Arc::new(RemotePump::new(writer.clone()));
        if let Some(pump) = &self.parts.pump {
            pump.hand_over(remote.clone());
        }
        for message in chunks(self.parts.contexts.export()) {
            send(
                &writer.lock().expect("writer lock"),
                &Frame::Message(message),
            )?;
        }
        send(
            &writer.lock().expect("writer lock"),
            &Frame::Message(Message::ContextsEnd),
        )?;
        *self.taken_by.lock().expect("taken lock") = Some(writer);
        info!(
            successor = pid,
            "taken over; serving the connections already here"
        );
        // Events the successor copies here, and its answers to `PumpNow`.
        loop {
            match reader.next() {
                Ok(Some(Frame::Event(bytes))) => {
                    if let Some(event) = decode(&bytes) {
                        let state = self.parts.state.load();
                        self.parts.contexts.on_inbound(event, &state.settings);
                    }
                }
                Ok(Some(Frame::Message(Message::Pumped { n }))) => remote.ack(n),
                Ok(Some(Frame::Message(Message::Serving))) => remote.serving(),
                Ok(Some(Frame::Message(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        remote.close();
        Ok(())
    }
}

/// Asks the successor, which now drains the event ring, to deliver what
/// it holds; its events arrive on the session before its `Pumped`.
struct RemotePump {
    writer: Arc<Mutex<UnixStream>>,
    asked: AtomicU64,
    answered: Mutex<u64>,
    changed: Condvar,
    closed: AtomicBool,
    serving: AtomicBool,
}

impl RemotePump {
    fn new(writer: Arc<Mutex<UnixStream>>) -> Self {
        Self {
            writer,
            asked: AtomicU64::new(0),
            answered: Mutex::new(0),
            changed: Condvar::new(),
            closed: AtomicBool::new(false),
            serving: AtomicBool::new(false),
        }
    }

    fn serving(&self) {
        // Under the lock, so that a waiter cannot miss it.
        let _answered = self.answered.lock().expect("answered lock");
        self.serving.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    fn ack(&self, n: u64) {
        let mut answered = self.answered.lock().expect("answered lock");
        *answered = (*answered).max(n);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }
}

impl Pump for RemotePump {
    fn pump(&self) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let n = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let asked = send(
            &self.writer.lock().expect("writer lock"),
            &Frame::Message(Message::PumpNow { n }),
        );
        if asked.is_err() {
            self.close();
            return;
        }
        let answered = self.answered.lock().expect("answered lock");
        let wait = if self.serving.load(Ordering::SeqCst) {
            REMOTE_WAIT
        } else {
            SERVING_WAIT
        };
        let _ = self.changed.wait_timeout_while(answered, wait, |answered| {
            *answered < n && !self.closed.load(Ordering::SeqCst)
        });
    }
}

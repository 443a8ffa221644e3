//! The new daemon's side of a handover (see the module above for the steps).
use std::{
    io,
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::Path,
    sync::{Arc, mpsc},
    time::Duration,
};

use tracing::{info, warn};

use super::{Frame, HandoverError, ListenerRole, Message, Reader, fds, send};
use crate::propagation::{Pump, events::EventPump, snapshot::StoreSnapshot};

/// Events copied to the predecessor and not yet written; past this the
/// copying stops (a predecessor that does not read must not grow this
/// daemon's memory): its last decisions then lack contexts and are
/// untrusted, never wrong.
const MAX_PENDING_EVENTS: usize = 65_536;
/// A live predecessor welcomes at once (its handover thread waits for
/// nothing else); one that has stopped taking successors leaves a hello
/// unread until it exits.
const WELCOME_WAIT: Duration = Duration::from_secs(2);

/// A failure to be welcomed that says the other daemon stopped taking
/// successors: it closed the session (unread, hence a reset) or let the
/// hello wait.
fn stopping(error: io::Error) -> HandoverError {
    match error.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::TimedOut => HandoverError::Stopping(error),
        _ => HandoverError::Io(error),
    }
}

/// A live predecessor that answered.
pub struct Successor {
    reader: Reader,
    writer: UnixStream,
    pub predecessor_pid: u32,
    /// The predecessor's map layout and generation.
    pub layout: String,
    pub generation: u32,
    listeners: Vec<(ListenerRole, OwnedFd)>,
    /// The highest `PumpNow` that came while the contexts did (the old
    /// daemon asks as soon as it has handed the ring over); answered once
    /// this daemon serves.
    asked_early: Option<u64>,
}

impl Successor {
    /// Greets the daemon listening on `path`, if any. `Ok(None)`: nobody
    /// there (no socket file, or a stale one nobody listens on).
    /// [`HandoverError::Stopping`]: one is there but takes no successor;
    /// it is gone once its connections are drained.
    pub fn connect(path: &Path, layout: &str) -> Result<Option<Self>, HandoverError> {
        let stream = match UnixStream::connect(path) {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        send(
            &stream,
            &Frame::Message(Message::Hello {
                layout: layout.to_string(),
                pid: std::process::id(),
            }),
        )
        .map_err(stopping)?;
        stream.set_read_timeout(Some(WELCOME_WAIT))?;
        let mut first = vec![0u8; 64 * 1024];
        let (n, fds) = fds::recv_with_fds(&stream, &mut first).map_err(stopping)?;
        if n == 0 {
            return Err(HandoverError::Stopping(io::ErrorKind::UnexpectedEof.into()));
        }
        // Later steps wait as long as the predecessor takes (a freeze, the
        // contexts) or for its whole drain (the events it asks for).
        stream.set_read_timeout(None)?;
        let mut reader = Reader::new(stream.try_clone()?);
        reader.prime(&first[..n]);
        let message = reader.message("welcome")?;
        let Message::Welcome {
            layout,
            generation,
            pid,
            listeners,
        } = message
        else {
            return Err(HandoverError::Unexpected {
                expected: "welcome",
                got: Frame::Message(message),
            });
        };
        if listeners.len() != fds.len() {
            return Err(HandoverError::Listeners {
                got: fds.len(),
                want: listeners.len(),
            });
        }
        Ok(Some(Self {
            reader,
            writer: stream,
            predecessor_pid: pid,
            layout,
            generation,
            listeners: listeners.into_iter().zip(fds).collect(),
            asked_early: None,
        }))
    }

    /// The predecessor's listening socket of `role`, if it passed one.
    pub fn take_listener(&mut self, role: ListenerRole) -> Option<OwnedFd> {
        let at = self.listeners.iter().position(|(r, _)| *r == role)?;
        Some(self.listeners.remove(at).1)
    }

    /// Asks the predecessor to leave the shared maps alone; its generation.
    pub fn freeze(&mut self) -> Result<u32, HandoverError> {
        send(&self.writer, &Frame::Message(Message::Freeze))?;
        match self.reader.message("frozen")? {
            Message::Frozen { generation } => Ok(generation),
            other => Err(HandoverError::Unexpected {
                expected: "frozen",
                got: Frame::Message(other),
            }),
        }
    }

    /// Says this daemon's programs act now; the predecessor's contexts.
    pub fn take_over(&mut self) -> Result<StoreSnapshot, HandoverError> {
        send(&self.writer, &Frame::Message(Message::TakeOver))?;
        let mut snapshot = StoreSnapshot::default();
        loop {
            match self.reader.message("contexts")? {
                Message::Contexts { chunk } => {
                    snapshot.threads.extend(chunk.threads);
                    snapshot.ids.extend(chunk.ids);
                }
                Message::ContextsEnd => return Ok(snapshot),
                Message::PumpNow { n } => {
                    self.asked_early = Some(self.asked_early.unwrap_or(0).max(n));
                }
                other => {
                    return Err(HandoverError::Unexpected {
                        expected: "contexts",
                        got: Frame::Message(other),
                    });
                }
            }
        }
    }

    /// Maps of another layout: the predecessor fails open and drains.
    pub fn retire(mut self) -> Result<(), HandoverError> {
        send(&self.writer, &Frame::Message(Message::Retire))?;
        match self.reader.message("retired")? {
            Message::Retired => Ok(()),
            other => Err(HandoverError::Unexpected {
                expected: "retired",
                got: Frame::Message(other),
            }),
        }
    }

    /// Until the predecessor has drained: copies every kernel event to it
    /// and delivers on its demand. Runs on its own threads.
    pub fn serve_predecessor(self, pump: Option<Arc<EventPump>>) {
        let Self {
            mut reader,
            writer,
            predecessor_pid,
            asked_early,
            ..
        } = self;
        let (frames, pending) = mpsc::sync_channel::<Frame>(MAX_PENDING_EVENTS);
        let spawned = std::thread::Builder::new()
            .name("handover-out".into())
            .spawn(move || {
                for frame in pending {
                    if send(&writer, &frame).is_err() {
                        return;
                    }
                }
            });
        if let Err(error) = spawned {
            warn!(%error, "cannot start the handover writer");
            return;
        }
        if let Some(pump) = &pump {
            let copies = frames.clone();
            pump.set_tee(Box::new(move |bytes| {
                copies.try_send(Frame::Event(bytes.to_vec())).is_ok()
            }));
        }
        // Events drained from here on reach the old daemon before these.
        let _ = frames.send(Frame::Message(Message::Serving));
        if let Some(n) = asked_early {
            if let Some(pump) = &pump {
                pump.pump();
            }
            let _ = frames.send(Frame::Message(Message::Pumped { n }));
        }
        let spawned = std::thread::Builder::new()
            .name("handover-in".into())
            .spawn(move || {
                loop {
                    match reader.next() {
                        Ok(Some(Frame::Message(Message::PumpNow { n }))) => {
                            if let Some(pump) = &pump {
                                pump.pump();
                            }
                            if frames.send(Frame::Message(Message::Pumped { n })).is_err() {
                                break;
                            }
                        }
                        Ok(Some(Frame::Message(Message::Drained))) => {
                            info!(predecessor = predecessor_pid, "the predecessor has drained");
                            break;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                if let Some(pump) = &pump {
                    pump.clear_tee();
                }
            });
        if let Err(error) = spawned {
            warn!(%error, "cannot start the handover reader");
        }
    }
}

//! Handing a node over from one daemon to the next (a restart, a DaemonSet
//! rolling update) without losing a request or a lane.
//!
//! Every daemon listens on a handover socket beside its admin socket. A new
//! daemon that finds a live one there takes over in steps, while the old one
//! keeps serving:
//!
//! 1. `Hello` / `Welcome`: the old daemon sends its listening sockets
//!    (`SCM_RIGHTS`): the proxy's, whose queue of redirected connections
//!    is never closed, and the metrics one. It says its generation and the
//!    layout of its pinned maps.
//! 2. `Freeze` / `Frozen` (once the new daemon has its first state): the
//!    old daemon stops writing the shared maps and answering the process
//!    ring. The new one loads its programs on the same pinned maps as the
//!    next generation, adopts the pod slots and managed destinations,
//!    applies its own state, attaches its programs (inert) and probes the Go
//!    processes, then switches the live generation in one map write: from
//!    that instant its programs act and the old ones do nothing.
//! 3. `TakeOver`: the old daemon stops accepting, delivers what is left in
//!    the event ring and sends its request contexts (`Contexts`, in chunks,
//!    then `ContextsEnd`); the ring is the new daemon's from then on. The
//!    old daemon finishes its connections (HTTP/1.1: `Connection: close` on
//!    each one's next answer; HTTP/2: GOAWAY); a context it still needs is
//!    asked of the new daemon (`PumpNow` / events / `Pumped`), which answers
//!    once it has the contexts (`Serving`). `Drained` when it is done.
//!
//! Maps of different layouts (an upgrade that changed them) cannot be
//! shared: the new daemon sends `Retire`, the old one fails open and drains,
//! and the new one starts on fresh maps (lanes lapse for its start time).
//! If the new daemon goes away before `TakeOver`, the old one resumes.
mod fds;
pub mod predecessor;
pub mod successor;

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::propagation::snapshot::StoreSnapshot;

/// Contexts per `Contexts` message: each message stays far below the
/// frame limit whatever the headers carried.
const CONTEXT_CHUNK: usize = 256;
/// The largest frame either side accepts.
const MAX_FRAME: usize = 16 << 20;

const KIND_MESSAGE: u8 = 1;
const KIND_EVENT: u8 = 2;

/// The handover socket of the daemon whose admin socket is `admin`.
pub fn socket_path(admin: &Path) -> PathBuf {
    let mut name = admin.as_os_str().to_owned();
    name.push(".handover");
    PathBuf::from(name)
}

/// Which listening socket a passed descriptor is, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerRole {
    Proxy,
    Metrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello {
        layout: String,
        pid: u32,
    },
    Welcome {
        layout: String,
        generation: u32,
        pid: u32,
        listeners: Vec<ListenerRole>,
    },
    Freeze,
    Frozen {
        generation: u32,
    },
    TakeOver,
    Contexts {
        chunk: StoreSnapshot,
    },
    ContextsEnd,
    /// The successor answers `PumpNow` from now on (it has the contexts).
    Serving,
    PumpNow {
        n: u64,
    },
    Pumped {
        n: u64,
    },
    Retire,
    Retired,
    Drained,
}

/// What travels: a control message, or one raw kernel event (new -> old).
#[derive(Debug, PartialEq)]
pub enum Frame {
    Message(Message),
    Event(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover socket: {0}")]
    Io(#[from] io::Error),
    #[error("handover: bad message: {0}")]
    Decode(String),
    #[error("handover: expected {expected}, got {got:?}")]
    Unexpected { expected: &'static str, got: Frame },
    #[error("handover: the predecessor sent {got} listening sockets for {want} roles")]
    Listeners { got: usize, want: usize },
    /// The running daemon closed the session without a welcome: it is
    /// stopping with no successor (SIGINT, or SIGTERM with none in time)
    /// and still drains, or is hung.
    #[error("handover: the running daemon is stopping and takes no successor ({0})")]
    Stopping(io::Error),
}

fn encode(frame: &Frame) -> Vec<u8> {
    let (kind, payload) = match frame {
        Frame::Message(message) => (
            KIND_MESSAGE,
            serde_json::to_vec(message).expect("messages serialize"),
        ),
        Frame::Event(bytes) => (KIND_EVENT, bytes.clone()),
    };
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Parses one frame from the start of `bytes`: the frame and its length,
/// `None` if more bytes are needed.
fn decode(bytes: &[u8]) -> Result<Option<(Frame, usize)>, HandoverError> {
    let Some(header) = bytes.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(HandoverError::Decode(format!("a frame of {len} bytes")));
    }
    let Some(payload) = bytes.get(5..5 + len) else {
        return Ok(None);
    };
    let frame = match header[0] {
        KIND_MESSAGE => Frame::Message(
            serde_json::from_slice(payload).map_err(|e| HandoverError::Decode(e.to_string()))?,
        ),
        KIND_EVENT => Frame::Event(payload.to_vec()),
        other => return Err(HandoverError::Decode(format!("frame kind {other}"))),
    };
    Ok(Some((frame, 5 + len)))
}

/// Writes one frame whole.
fn send(stream: &UnixStream, frame: &Frame) -> io::Result<()> {
    (&*stream).write_all(&encode(frame))
}

/// Reads frames one at a time from a stream.
struct Reader {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Reader {
    fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Bytes read with descriptors (the first message of the old daemon).
    fn prime(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame; `None` at the end of the stream.
    fn next(&mut self) -> Result<Option<Frame>, HandoverError> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some((frame, used)) = decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame, which must be a message.
    fn message(&mut self, expected: &'static str) -> Result<Message, HandoverError> {
        match self.next()? {
            Some(Frame::Message(message)) => Ok(message),
            Some(got) => Err(HandoverError::Unexpected { expected, got }),
            None => Err(HandoverError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the other daemon closed the handover socket (expected {expected})"),
            ))),
        }
    }
}

/// Splits a context snapshot into messages of [`CONTEXT_CHUNK`] entries.
fn chunks(snapshot: StoreSnapshot) -> impl Iterator<Item = Message> {
    let mut threads = snapshot.threads.into_iter().peekable();
    let mut ids = snapshot.ids.into_iter().peekable();
    std::iter::from_fn(move || {
        if threads.peek().is_none() && ids.peek().is_none() {
            return None;
        }
        let threads: Vec<_> = threads.by_ref().take(CONTEXT_CHUNK).collect();
        let ids: Vec<_> = ids.by_ref().take(CONTEXT_CHUNK - threads.len()).collect();
        Some(Message::Contexts {
            chunk: StoreSnapshot { threads, ids },
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::snapshot::{ContextRecord, IdRecord, ThreadRecord};

    #[test]
    fn frames_round_trip_and_wait_for_their_whole_length() {
        for frame in [
            Frame::Message(Message::Hello {
                layout: "ab".into(),
                pid: 7,
            }),
            Frame::Message(Message::Pumped { n: 3 }),
            Frame::Event(vec![1, 2, 3, 0, 255]),
            Frame::Event(vec![]),
        ] {
            let bytes = encode(&frame);
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut]).unwrap().is_none(),
                    "{frame:?} at {cut}"
                );
            }
            let (back, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!((back, used), (frame, bytes.len()));
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(decode(&[9, 0, 0, 0, 0]).is_err(), "unknown kind");
        assert!(decode(&[1, 2, 0, 0, 0, b'{', b'x']).is_err(), "bad JSON");
        assert!(decode(&[1, 0xff, 0xff, 0xff, 0xff]).is_err(), "too long");
    }

    #[test]
    fn snapshots_are_chunked_and_nothing_is_lost() {
        let context = ContextRecord {
            lane: Some("gray".into()),
            passthrough: vec![],
            ids: vec![],
        };
        let snapshot = StoreSnapshot {
            threads: (0..600)
                .map(|i| ThreadRecord {
                    pid_tgid: i,
                    seq: 1,
                    partial: vec![],
                    context: Some(Some(context.clone())),
                    age_ms: 0,
                })
                .collect(),
            ids: (0..300)
                .map(|i| IdRecord {
                    id: format!("id-{i}"),
                    context: context.clone(),
                    age_ms: 0,
                })
                .collect(),
        };
        let messages: Vec<Message> = chunks(snapshot).collect();
        assert_eq!(messages.len(), 4);
        let (mut threads, mut ids) = (0, 0);
        for message in messages {
            let Message::Contexts { chunk } = message else {
                panic!("{message:?}")
            };
            assert!(chunk.threads.len() + chunk.ids.len() <= CONTEXT_CHUNK);
            threads += chunk.threads.len();
            ids += chunk.ids.len();
        }
        assert_eq!((threads, ids), (600, 300));
        assert_eq!(chunks(StoreSnapshot::default()).count(), 0);
    }
}

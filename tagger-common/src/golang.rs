//! Types shared by the Go uprobes (`tagger-ebpf/src/golang.rs`) and the
//! daemon (`tagger-user/src/golang/attach.rs`).

/// Struct field offsets of one probed Go process, in `TAGGER_GO_PROCS` by
/// tgid (the programs carry no constants: a process without an entry is
/// left alone). Each is the field's byte offset in its struct; a `net.Conn`
/// interface field's data word is 8 bytes after the field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoOffsets {
    /// `runtime.g.goid`.
    pub goid: u64,
    /// `runtime.g.m`.
    pub g_m: u64,
    /// `runtime.m.curg`.
    pub m_curg: u64,
    /// `runtime.g.startpc`; 0 when unknown (then every new goroutine is
    /// taken for the parent's, as before).
    pub g_startpc: u64,
    /// Entry addresses of the functions the Go runtime starts goroutines of
    /// its own with, from whichever user goroutine is running when it needs
    /// them ([`RUNTIME_GOROUTINES`]); 0 for one the binary lacks. A new
    /// goroutine starting at one of them inherits nothing and takes no
    /// grpc-go stream handoff: the first GC cycle's mark workers, started
    /// by a grpc-go reader goroutine that allocated, took the handoff meant
    /// for the stream's handler, whose call then went out untrusted.
    pub runtime_goroutines: [u64; RUNTIME_GOROUTINES.len()],
    /// `net/http.persistConn.conn` (`net.Conn`).
    pub persist_conn_conn: u64,
    /// `net.TCPConn.conn` (embedded `net.conn`).
    pub tcpconn_conn: u64,
    /// `net.conn.fd` (`*netFD`).
    pub conn_fd: u64,
    /// `net.netFD.pfd` (`poll.FD`, by value).
    pub netfd_pfd: u64,
    /// `net.netFD.family` (`int`).
    pub netfd_family: u64,
    /// `net.netFD.sotype` (`int`).
    pub netfd_sotype: u64,
    /// `internal/poll.FD.Sysfd` (`int`).
    pub fd_sysfd: u64,
    /// 1 when the grpc-go programs are attached and the fields below are
    /// known; 0 leaves gRPC alone.
    pub grpc: u64,
    /// grpc-go `transport.http2Server.conn` (`net.Conn`).
    pub grpc_server_conn: u64,
    /// grpc-go `transport.Stream.id` (`uint32`).
    pub grpc_stream_id: u64,
    /// grpc-go `transport.loopyWriter.framer` (`*framer`).
    pub grpc_loopy_framer: u64,
    /// grpc-go `transport.framer.writer` (`*bufWriter`).
    pub grpc_framer_writer: u64,
    /// grpc-go `transport.bufWriter.conn` (`net.Conn`).
    pub grpc_writer_conn: u64,
}

/// The Go runtime's functions that it starts goroutines with lazily, from
/// a user goroutine (`gcBgMarkStartWorkers` at a GC cycle's start when
/// workers are missing; `createfing` at the first finalizer set). The ones
/// started at process start (`bgsweep`, `forcegchelper`, ...) run before
/// any request.
pub const RUNTIME_GOROUTINES: [&str; 2] = ["runtime.gcBgMarkWorker", "runtime.runfinq"];

/// The key of a Go connection's state: `tgid << 32 | fd`. A request tag of
/// a Go process carries it in place of `pid_tgid` (with `TAG_GOROUTINE`),
/// and the inbound events of the connection carry it too, so userspace
/// finds the context by it exactly as it finds a thread's.
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// The key of an inbound HTTP/2 stream's context in a Go process: the high
/// bit of the low word set (an fd never has it), then the fd and stream id
/// mixed into 31 bits. Exact for fds below 2048 and stream ids below 2^20;
/// beyond, two open streams may share a key, and the older one's context
/// then reads as over (a `seq` never matches another request's): untrusted,
/// never another stream's lane.
#[inline(always)]
pub const fn stream_key(tgid: u32, fd: u32, stream_id: u32) -> u64 {
    let mixed = ((fd << 20) ^ stream_id) & 0x7fff_ffff;
    ((tgid as u64) << 32) | 0x8000_0000 | mixed as u64
}

/// Layout of grpc-go's decoded header fields (`golang.org/x/net/http2`,
/// unchanged since 2015): `MetaHeadersFrame` is `{*HeadersFrame; Fields
/// []hpack.HeaderField; ...}`, `HeadersFrame` starts with the
/// `FrameHeader`, whose `StreamID` is at 8, and `hpack.HeaderField` is
/// `{Name, Value string; Sensitive bool}`. Checked against the DWARF of the
/// binary when it has some.
pub mod h2 {
    pub const META_HEADERS_FIELDS: u64 = 8;
    pub const FRAME_HEADER_STREAM_ID: u64 = 8;
    pub const HEADER_FIELD_VALUE: u64 = 16;
    pub const HEADER_FIELD_SIZE: u64 = 40;
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: #[repr(C)], integers only, no padding.
    unsafe impl aya::Pod for GoOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<GoOffsets>(), 152);
    }

    #[test]
    fn stream_keys_never_meet_conn_keys_and_keep_streams_apart() {
        let cases = [(3, 1), (3, 3), (4, 1), (2047, (1 << 20) - 1)];
        for (i, &(fd, id)) in cases.iter().enumerate() {
            assert_ne!(stream_key(9, fd, id), conn_key(9, fd));
            assert_eq!(stream_key(9, fd, id) >> 32, 9);
            for &(fd2, id2) in &cases[i + 1..] {
                assert_ne!(stream_key(9, fd, id), stream_key(9, fd2, id2));
            }
        }
    }

    #[test]
    fn conn_keys_keep_tgid_and_fd_apart() {
        assert_eq!(conn_key(7, 3), 7 << 32 | 3);
        assert_ne!(conn_key(1, 0), conn_key(0, 1));
    }
}

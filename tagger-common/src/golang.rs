//! Types shared by the Go uprobes (`tagger-ebpf/src/golang.rs`) and the
//! daemon (`tagger-user/src/golang/probe.rs`).

/// Struct field offsets of one Go process, in `TAGGER_GO_OFFSETS` by tgid
/// (the programs carry no constants: a process without an entry is left
/// alone). Each is the field's byte offset in its struct; a `net.Conn`
/// interface field's data word is 8 bytes after the field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoOffsets {
    /// `runtime.g.goid`.
    pub goid: u64,
    /// `net/http.persistConn.conn` (`net.Conn`).
    pub persist_conn_conn: u64,
    /// `net/http.conn.rwc` (`net.Conn`).
    pub conn_rwc: u64,
    /// `net/http.response.conn` (`*conn`).
    pub response_conn: u64,
    /// `net.TCPConn.conn` (embedded `net.conn`).
    pub tcpconn_conn: u64,
    /// `net.conn.fd` (`*netFD`).
    pub conn_fd: u64,
    /// `net.netFD.pfd` (`poll.FD`, by value).
    pub netfd_pfd: u64,
    /// `internal/poll.FD.Sysfd` (`int`).
    pub fd_sysfd: u64,
}

/// Bytes of a socket read or write copied into a [`GoEvent`].
pub const GO_CAPTURE_BYTES: usize = 64;
/// Capacity of the Go event ring (bytes, a power of two).
pub const GO_EVENTS_RING_BYTES: u32 = 4 * 1024 * 1024;

/// What a Go probe saw. `goid` is the current goroutine's id (for
/// [`GO_NEWPROC`]: the parent's), `fd` the socket, -1 when none.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoEvent {
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid << 32 | tid.
    pub pid_tgid: u64,
    pub goid: u64,
    /// [`GO_NEWPROC`]: the child's goid.
    pub aux: u64,
    /// `GO_*` kind.
    pub kind: u32,
    pub fd: i32,
    /// Valid bytes in `data` ([`GO_READ`], [`GO_WRITE`]).
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; GO_CAPTURE_BYTES],
}

/// `net/http.serverHandler.ServeHTTP` entry: a handler starts (fd: inbound).
pub const GO_SERVE: u32 = 1;
/// ... and returns.
pub const GO_SERVE_DONE: u32 = 2;
/// `net/http.(*persistConn).roundTrip` entry (fd: outbound).
pub const GO_ROUND_TRIP: u32 = 3;
/// ... and returns.
pub const GO_ROUND_TRIP_DONE: u32 = 4;
/// `runtime.newproc1` returned: `goid` started `aux`.
pub const GO_NEWPROC: u32 = 5;
/// `runtime.goexit1`: the goroutine ends.
pub const GO_EXIT: u32 = 6;
/// A socket read by the process (goid from the syscall's R14).
pub const GO_READ: u32 = 7;
/// A socket write by the process (goid from the syscall's R14).
pub const GO_WRITE: u32 = 8;

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: #[repr(C)], integers only, padding spelled out.
    unsafe impl aya::Pod for GoOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GoEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<GoOffsets>(), 64);
        assert_eq!(size_of::<GoEvent>(), 48 + GO_CAPTURE_BYTES);
    }
}

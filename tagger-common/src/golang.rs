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
}

/// The key of a Go connection's state: `tgid << 32 | fd`. A request tag of
/// a Go process carries it in place of `pid_tgid` (with `TAG_GOROUTINE`),
/// and the inbound events of the connection carry it too, so userspace
/// finds the context by it exactly as it finds a thread's.
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
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
        assert_eq!(size_of::<GoOffsets>(), 80);
    }

    #[test]
    fn conn_keys_keep_tgid_and_fd_apart() {
        assert_eq!(conn_key(7, 3), 7 << 32 | 3);
        assert_ne!(conn_key(1, 0), conn_key(0, 1));
    }
}

//! Go programs: the lane follows goroutines, not threads.
//!
//! Go runs many requests on few threads and moves goroutines between them,
//! and `net/http`'s client writes each request from the connection's own
//! `writeLoop` goroutine. So for a Go process (kind `GO`) the context is
//! carried this way, every step checked:
//!
//! 1. **Read** (`sock_recv_length`, from propagation.rs): the start of an
//!    HTTP request read on an accepted socket opens a context keyed by the
//!    connection, `conn_key(tgid, fd)`, with a fresh `seq`; its bytes go to
//!    userspace under that key.
//! 2. **Handler**: the goroutine that made that read (its g is in R14 at
//!    the syscall, which the kernel saved with the user registers) takes the
//!    context. In net/http it is the connection's goroutine, which runs the
//!    handler; a server that hands requests to other goroutines over
//!    channels gets nothing trusted (step 4 finds no context). No uprobe:
//!    the read is already traced.
//! 3. **Fan-out** (uprobe at each RET of `runtime.newproc1`): a goroutine
//!    started by one with a live context inherits it. The parent is the
//!    thread's user goroutine (`g0.m.curg`: newproc1 runs on the system
//!    stack), the child the returned g. Goroutines the runtime starts for
//!    itself from a user goroutine (GC mark workers, the finalizer
//!    goroutine) inherit nothing.
//! 4. **Call** (uprobe at `net/http.(*persistConn).roundTrip`, on the
//!    calling goroutine, before the request is handed to `writeLoop`): the
//!    caller's context, if still live, is bound to the outbound
//!    connection, `conn_key(tgid, fd)`. One request is in flight per
//!    HTTP/1 connection, so the binding names the next request written.
//! 5. **Write** (`tcp_sendmsg_locked`, propagation.rs): the start of a
//!    request written on a redirected socket consumes the binding of its fd
//!    and becomes the socket's request tag (`TAG_GOROUTINE`).
//! 6. **Answer** (`sock_send_length`): an HTTP response (not 1xx) written on
//!    the connection ends the context: goroutines that outlive their
//!    request inherit nothing trusted, and neither does the handler of a
//!    pipelined request read in the same buffer (its start was not seen).
//!
//! Go >= 1.17 register ABI on amd64: arguments in RAX, RBX, RCX, RDI, ...,
//! receiver first; R14 holds the current g. Struct offsets come per process
//! from `TAGGER_GO_PROCS` (a process without an entry is left alone), and
//! every `net.Conn` is checked to hold a TCP socket before its fd is used.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use tagger_common::{
    EVENT_FIRST, MAX_CAPTURE_PER_REQUEST, TAG_GOROUTINE, TAG_UNTRUSTED,
    golang::{GoOffsets, conn_key},
    stat,
};

use crate::{bump, propagation};

/// Probed Go processes, by tgid.
#[map]
static TAGGER_GO_PROCS: HashMap<u32, GoOffsets> = HashMap::with_max_entries(4096, 0);

/// The newest inbound request of each accepted connection of a Go process.
#[repr(C)]
#[derive(Clone, Copy)]
struct GoConn {
    seq: u64,
    /// Bytes read alone after the answer (see `on_read`), little-endian.
    prefix: u64,
    /// Bytes of the request sent to userspace.
    captured: u32,
    /// 1 once a response was written: the request is over.
    done: u32,
    /// Valid bytes in `prefix` (0 to 7).
    prefix_len: u32,
    _pad: u32,
}

#[map]
static TAGGER_GO_CONNS: LruHashMap<u64, GoConn> = LruHashMap::with_max_entries(65_536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct GoroutineKey {
    pub(crate) tgid: u32,
    pub(crate) _pad: u32,
    pub(crate) goid: u64,
}

/// The inbound request a goroutine works for.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct GoContext {
    pub(crate) seq: u64,
    /// Its key in `TAGGER_GO_CONNS`: `conn_key` of an HTTP/1 connection,
    /// `stream_key` of an HTTP/2 stream (grpc.rs).
    pub(crate) key: u64,
}

/// Goroutines never reuse ids, so stale entries only age out of the LRU.
#[map]
pub(crate) static TAGGER_GO_ROUTINES: LruHashMap<GoroutineKey, GoContext> =
    LruHashMap::with_max_entries(65_536, 0);

/// What `roundTrip` bound to an outbound connection for its next request
/// (or grpc.rs to a stream's header fields).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct GoCall {
    /// 0 with `untrusted` 0: the caller serves no request.
    seq: u64,
    pub(crate) bound_ns: u64,
    /// The context's key (`GoContext::key`).
    key: u64,
    untrusted: u32,
    _pad: u32,
}

impl GoCall {
    /// The request tag it makes: (key, seq, flags), `None` for nothing to
    /// carry.
    #[inline(always)]
    pub(crate) fn tag(&self, pid_tgid: u64) -> Option<(u64, u64, u32)> {
        if self.seq != 0 {
            Some((self.key, self.seq, TAG_GOROUTINE))
        } else if self.untrusted != 0 {
            Some((pid_tgid, 0, TAG_UNTRUSTED))
        } else {
            None
        }
    }
}

#[map]
static TAGGER_GO_CALLS: LruHashMap<u64, GoCall> = LruHashMap::with_max_entries(65_536, 0);

/// A binding older than this is not the request being written (its
/// roundTrip failed before writing; the fd was reused).
pub(crate) const CALL_TTL_NS: u64 = 5_000_000_000;
/// Offset of r14 in `struct pt_regs` (x86_64).
const REG_R14: usize = 8;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const SOCK_STREAM: u64 = 1;

#[inline(always)]
pub(crate) fn offsets(tgid: u32) -> Option<GoOffsets> {
    // SAFETY: plain value copied out at once.
    unsafe { TAGGER_GO_PROCS.get(tgid) }.copied()
}

/// A process stops being probed (exit or exec).
#[inline(always)]
pub(crate) fn forget_process(tgid: u32) {
    let _ = TAGGER_GO_PROCS.remove(tgid);
}

#[inline(always)]
pub(crate) fn read_u64(addr: u64) -> Option<u64> {
    if addr == 0 {
        return None;
    }
    // SAFETY: the helper checks the user address and fails cleanly.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The goid of the g at `g`.
#[inline(always)]
pub(crate) fn goid(g: u64, off: &GoOffsets) -> Option<u64> {
    read_u64(g + off.goid).filter(|&id| id != 0)
}

/// The socket fd behind the data word of a `net.Conn` holding a
/// `*net.TCPConn`. Anything else there (a `*tls.Conn`, a wrapper) has no
/// TCP `netFD` at those offsets, which the family and type check catches.
#[inline(always)]
pub(crate) fn tcp_fd(tcpconn: u64, off: &GoOffsets) -> Option<u32> {
    let netfd = read_u64(tcpconn + off.tcpconn_conn + off.conn_fd)?;
    let family = read_u64(netfd + off.netfd_family)?;
    let sotype = read_u64(netfd + off.netfd_sotype)?;
    if (family != AF_INET && family != AF_INET6) || sotype != SOCK_STREAM {
        return None;
    }
    read_u64(netfd + off.netfd_pfd + off.fd_sysfd)
        .filter(|&fd| fd < 1 << 31)
        .map(|fd| fd as u32)
}

/// Is the context still that of an open request?
#[inline(always)]
fn live(context: &GoContext) -> bool {
    if context.seq == 0 {
        return false;
    }
    // SAFETY: plain value read.
    unsafe { TAGGER_GO_CONNS.get(context.key) }
        .is_some_and(|conn| conn.seq == context.seq && conn.done == 0)
}

/// The g that made the current syscall: R14 when it entered the kernel (Go
/// keeps g in R14 down to the SYSCALL instruction).
#[inline(always)]
pub(crate) fn syscall_g() -> u64 {
    // SAFETY: both helpers return pointers the verifier knows by BTF; the
    // load is checked against `struct pt_regs` and cannot fault.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        core::ptr::read_volatile(regs.add(REG_R14).cast::<u64>())
    }
}

/// Steps 1 and 2: a Go process read `len` bytes at `buf` from accepted
/// socket `fd`; `first` is the first 8 bytes there (fewer valid when `len`
/// is smaller).
///
/// net/http's server keeps a 1-byte "background read" pending on the
/// connection while a handler runs, and aborts it only after the response
/// is flushed: a client that sends its next request at once (a proxy's
/// keep-alive pool does) can have that byte read alone, and the rest of
/// the request start by the next read. The byte is kept, and the two reads
/// are recognised together as the start they are.
pub(crate) fn on_read(pid_tgid: u64, fd: u32, buf: u64, len: u64, first: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let key = conn_key(tgid, fd);
    if len >= 8 && propagation::is_h2_preface(first) {
        // An HTTP/2 server: its streams are followed by grpc.rs, if at all.
        propagation::note_multiplexed(pid_tgid);
        return;
    }
    if len >= 8 && propagation::is_request_start(first) {
        // SAFETY: a helper without arguments.
        let seq = unsafe { bpf_ktime_get_ns() };
        let captured =
            propagation::emit_read(key, seq, fd, buf, len, EVENT_FIRST, MAX_CAPTURE_PER_REQUEST);
        open_request(pid_tgid, key, seq, captured);
        return;
    }
    let Some(conn) = TAGGER_GO_CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: the map value lives while this program runs.
    let conn = unsafe { &mut *conn };
    if conn.prefix_len > 0 && len >= 8 {
        let n = conn.prefix_len & 7;
        let prefix = conn.prefix;
        conn.prefix_len = 0;
        let joined = prefix | (first << (8 * n));
        if propagation::is_request_start(joined) {
            // SAFETY: a helper without arguments.
            let seq = unsafe { bpf_ktime_get_ns() };
            let mut captured = propagation::emit_bytes(key, seq, fd, prefix, n, EVENT_FIRST);
            captured += propagation::emit_read(
                key,
                seq,
                fd,
                buf,
                len,
                0,
                MAX_CAPTURE_PER_REQUEST - captured,
            );
            open_request(pid_tgid, key, seq, captured);
            return;
        }
    }
    // Only the read just before can be a split start's first piece.
    conn.prefix_len = 0;
    if len < 8 {
        // A short read: perhaps the start of the next request, split (the
        // byte may come while the handler runs, or after the answer)...
        conn.prefix = first & ((1u64 << (8 * len)) - 1);
        conn.prefix_len = len as u32;
    }
    // ...or more of a header block that did not fit in one read.
    if conn.done == 0 && conn.captured < MAX_CAPTURE_PER_REQUEST {
        let budget = MAX_CAPTURE_PER_REQUEST - conn.captured;
        conn.captured += propagation::emit_read(key, conn.seq, fd, buf, len, 0, budget);
    }
}

/// A request starts on connection `key` (its first `captured` bytes sent to
/// userspace under `seq`): a fresh context, taken by the goroutine making
/// this read.
#[inline(always)]
fn open_request(pid_tgid: u64, key: u64, seq: u64, captured: u32) {
    let tgid = (pid_tgid >> 32) as u32;
    bump(stat::INBOUND_REQUESTS);
    propagation::count_inbound(pid_tgid);
    open_context(key, seq, captured);
    if let Some(off) = offsets(tgid)
        && let Some(goid) = goid(syscall_g(), &off)
    {
        let reader = GoroutineKey {
            tgid,
            _pad: 0,
            goid,
        };
        let context = GoContext { seq, key };
        let _ = TAGGER_GO_ROUTINES.insert(reader, context, 0);
    }
}

/// A request (a connection's, or a stream's) opens under `key`.
#[inline(always)]
pub(crate) fn open_context(key: u64, seq: u64, captured: u32) {
    let conn = GoConn {
        seq,
        prefix: 0,
        captured,
        done: 0,
        prefix_len: 0,
        _pad: 0,
    };
    let _ = TAGGER_GO_CONNS.insert(key, conn, 0);
}

/// The request under `key` is answered: its context is over.
#[inline(always)]
pub(crate) fn end_context(key: u64) {
    if let Some(conn) = TAGGER_GO_CONNS.get_ptr_mut(key) {
        // SAFETY: the map value lives while this program runs.
        unsafe { (*conn).done = 1 };
    }
}

/// Step 6: an HTTP response was written on accepted socket `fd`.
pub(crate) fn on_response(pid_tgid: u64, fd: u32) {
    end_context(conn_key((pid_tgid >> 32) as u32, fd));
}

/// Step 5: the tag for a request a Go process is writing on redirected
/// socket `fd`: (key, seq, flags), `None` for nothing to carry.
pub(crate) fn take_call(pid_tgid: u64, fd: u32, now: u64) -> Option<(u64, u64, u32)> {
    let tgid = (pid_tgid >> 32) as u32;
    let key = conn_key(tgid, fd);
    // SAFETY: plain value copied out at once.
    let call = unsafe { TAGGER_GO_CALLS.get(key) }.copied();
    let Some(call) = call else {
        // Not sent through net/http's Transport: cause unknown.
        return propagation::untrusted_if_serving(pid_tgid);
    };
    let _ = TAGGER_GO_CALLS.remove(key);
    if now.saturating_sub(call.bound_ns) > CALL_TTL_NS {
        return propagation::untrusted_if_serving(pid_tgid);
    }
    call.tag(pid_tgid)
}

#[inline(always)]
pub(crate) fn regs(ctx: &ProbeContext) -> &aya_ebpf::bindings::pt_regs {
    // SAFETY: a uprobe's context is the user registers at the probe.
    unsafe { &*ctx.regs }
}

/// Step 3. At each RET of `newproc1(fn, callergp, callerpc) *g`: RAX = the
/// new g (its goid set); R14 = g0, whose m's `curg` is the parent.
#[uprobe]
pub fn tagger_go_newproc_ret(ctx: ProbeContext) -> u32 {
    let _ = try_newproc_ret(&ctx);
    0
}

fn try_newproc_ret(ctx: &ProbeContext) -> Option<()> {
    if !crate::active() {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let off = offsets(tgid)?;
    let r = regs(ctx);
    if started_by_the_runtime(r.rax, &off) {
        return None;
    }
    let m = read_u64(r.r14 + off.g_m)?;
    let parent = read_u64(m + off.m_curg).and_then(|g| goid(g, &off))?;
    let key = GoroutineKey {
        tgid,
        _pad: 0,
        goid: parent,
    };
    // SAFETY: plain value copied out at once.
    let context = match unsafe { TAGGER_GO_ROUTINES.get(key) }.copied() {
        Some(context) => context,
        // A grpc-go reader starting a stream's handler (grpc.rs).
        None if off.grpc != 0 => crate::grpc::take_handoff(key)?,
        None => return None,
    };
    if !live(&context) {
        return None;
    }
    let child = GoroutineKey {
        tgid,
        _pad: 0,
        goid: goid(r.rax, &off)?,
    };
    let _ = TAGGER_GO_ROUTINES.insert(child, context, 0);
    Some(())
}

/// Whether the new goroutine `g` runs one of the Go runtime's own
/// functions (`GoOffsets::runtime_goroutines`): it inherits nothing, and
/// leaves a grpc-go reader's handoff to the stream's handler.
#[inline(always)]
fn started_by_the_runtime(g: u64, off: &GoOffsets) -> bool {
    if off.g_startpc == 0 {
        return false;
    }
    let Some(start) = read_u64(g + off.g_startpc) else {
        return false;
    };
    off.runtime_goroutines
        .iter()
        .any(|&entry| entry != 0 && entry == start)
}

/// Step 4. `(*persistConn).roundTrip(pc, req)`: RAX = pc.
#[uprobe]
pub fn tagger_go_round_trip(ctx: ProbeContext) -> u32 {
    let _ = try_round_trip(&ctx);
    0
}

fn try_round_trip(ctx: &ProbeContext) -> Option<()> {
    if !crate::active() {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let off = offsets(tgid)?;
    let r = regs(ctx);
    let fd = read_u64(r.rax + off.persist_conn_conn + 8).and_then(|c| tcp_fd(c, &off))?;
    let call = call_of(pid_tgid, goid(r.r14, &off)?);
    let _ = TAGGER_GO_CALLS.insert(conn_key(tgid, fd), call, 0);
    Some(())
}

/// What a call made now by goroutine `goid` of process `pid_tgid` carries.
#[inline(always)]
pub(crate) fn call_of(pid_tgid: u64, goid: u64) -> GoCall {
    let key = GoroutineKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        goid,
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: plain value copied out at once.
    match unsafe { TAGGER_GO_ROUTINES.get(key) }.copied() {
        Some(context) if live(&context) => GoCall {
            seq: context.seq,
            bound_ns: now,
            key: context.key,
            untrusted: 0,
            _pad: 0,
        },
        // Its request is over, or was never known.
        Some(_) => GoCall {
            seq: 0,
            bound_ns: now,
            key: 0,
            untrusted: 1,
            _pad: 0,
        },
        // A goroutine no handler started (a pool, a timer): its cause is
        // unknown if the process serves requests.
        None => GoCall {
            seq: 0,
            bound_ns: now,
            key: 0,
            untrusted: u32::from(propagation::untrusted_if_serving(pid_tgid).is_some()),
            _pad: 0,
        },
    }
}

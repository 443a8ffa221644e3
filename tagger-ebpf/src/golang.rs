//! Go programs: uprobes on net/http and the runtime, placed by the daemon at
//! the file offsets `golang::inspect` found (entries, and each RET
//! instruction instead of uretprobes: Go moves goroutine stacks).
//!
//! Go >= 1.17 register ABI on amd64: arguments in RAX, RBX, RCX, RDI, RSI,
//! R8-R11 (receiver first), results from RAX; R14 holds the current `g` in
//! Go code. The struct offsets come per process from `TAGGER_GO_OFFSETS`
//! (keyed by tgid); a process without an entry is left alone.
//!
//! * `tagger_go_serve` / `_ret` (`net/http.serverHandler.ServeHTTP`): a
//!   handler goroutine starts on an inbound connection's fd / ends.
//! * `tagger_go_round_trip` / `_ret` (`net/http.(*persistConn).roundTrip`):
//!   the goroutine that sends a request, and the outbound connection's fd
//!   (the request bytes are written later by the connection's writeLoop
//!   goroutine, possibly on another thread).
//! * `tagger_go_newproc` / `_ret` (`runtime.newproc1`): parent and child
//!   goroutine (runs on the system stack: the parent is the RBX argument,
//!   not R14).
//! * `tagger_go_goexit` (`runtime.goexit1`): a goroutine ends.
//! * `tagger_go_sock_recv` / `tagger_go_tcp_send` (BTF tracepoints): socket
//!   reads and writes of a Go process, with the syscall's fd and the
//!   goroutine that made it (R14 saved at the syscall).
//!
//! Spike: every observation is an event to userspace, which correlates.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_probe_read_user as probe_read_raw, bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, map, uprobe},
    maps::{HashMap, LruHashMap, RingBuf},
    programs::{BtfTracePointContext, ProbeContext},
};
use tagger_common::golang::{
    GO_CAPTURE_BYTES, GO_EVENTS_RING_BYTES, GO_EXIT, GO_NEWPROC, GO_READ, GO_ROUND_TRIP,
    GO_ROUND_TRIP_DONE, GO_SERVE, GO_SERVE_DONE, GO_WRITE, GoEvent, GoOffsets,
};

use crate::propagation::{Direction, syscall_buffer};

/// Go processes to observe, by tgid.
#[map]
static TAGGER_GO_OFFSETS: HashMap<u32, GoOffsets> = HashMap::with_max_entries(4096, 0);

#[map]
static TAGGER_GO_EVENTS: RingBuf = RingBuf::with_byte_size(GO_EVENTS_RING_BYTES, 0);

/// `runtime.newproc1`'s parent g, by thread, from its entry to its RET.
#[map]
static TAGGER_GO_NEWPROC: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Do not wake the reader on submit (a wakeup is an irq_work, microseconds
/// in a VM): userspace polls.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// `recvmsg` flag: the bytes stay queued and will be read again.
const MSG_PEEK: u64 = 2;
/// Offset of r14 in `struct pt_regs` (x86_64).
const REG_R14: usize = 8;

#[inline(always)]
fn offsets(pid_tgid: u64) -> Option<GoOffsets> {
    // SAFETY: plain value copied out at once.
    unsafe { TAGGER_GO_OFFSETS.get(&((pid_tgid >> 32) as u32)) }.copied()
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    if addr == 0 {
        return None;
    }
    // SAFETY: the helper checks the user address and fails cleanly.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The goid of the g at `g`.
#[inline(always)]
fn goid(g: u64, off: &GoOffsets) -> u64 {
    read_u64(g + off.goid).unwrap_or(0)
}

/// The socket fd behind a `*net.TCPConn`.
/// ASSUMPTION (spike): the `net.Conn` holds a `*net.TCPConn` (not checked
/// against the itab: a `*tls.Conn` would read garbage, which the daemon
/// must rule out by comparing the itab's type with `*net.TCPConn`'s).
#[inline(always)]
fn tcpconn_fd(tcpconn: u64, off: &GoOffsets) -> i32 {
    let Some(netfd) = read_u64(tcpconn + off.tcpconn_conn + off.conn_fd) else {
        return -1;
    };
    read_u64(netfd + off.netfd_pfd + off.fd_sysfd).map_or(-1, |fd| fd as i32)
}

#[inline(always)]
fn send(pid_tgid: u64, kind: u32, goid: u64, aux: u64, fd: i32) {
    let event = GoEvent {
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid,
        goid,
        aux,
        kind,
        fd,
        len: 0,
        _pad: 0,
        data: [0; GO_CAPTURE_BYTES],
    };
    let _ = TAGGER_GO_EVENTS.output::<GoEvent>(&event, BPF_RB_NO_WAKEUP);
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> &aya_ebpf::bindings::pt_regs {
    // SAFETY: a uprobe's context is the user registers at the probe.
    unsafe { &*ctx.regs }
}

#[uprobe]
pub fn tagger_go_serve(ctx: ProbeContext) -> u32 {
    let _ = try_serve(&ctx);
    0
}

/// `serverHandler.ServeHTTP(sh, rw ResponseWriter, req *Request)`: RAX = sh
/// (its one field), RBX/RCX = rw's itab/data (`*response`), RDI = req.
fn try_serve(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let off = offsets(pid_tgid)?;
    let r = regs(ctx);
    let g = goid(r.r14, &off);
    let conn = read_u64(r.rcx + off.response_conn)?;
    let tcpconn = read_u64(conn + off.conn_rwc + 8)?;
    send(pid_tgid, GO_SERVE, g, r.rdi, tcpconn_fd(tcpconn, &off));
    Some(())
}

#[uprobe]
pub fn tagger_go_serve_ret(ctx: ProbeContext) -> u32 {
    let _ = try_done(&ctx, GO_SERVE_DONE);
    0
}

fn try_done(ctx: &ProbeContext, kind: u32) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let off = offsets(pid_tgid)?;
    send(pid_tgid, kind, goid(regs(ctx).r14, &off), 0, -1);
    Some(())
}

#[uprobe]
pub fn tagger_go_round_trip(ctx: ProbeContext) -> u32 {
    let _ = try_round_trip(&ctx);
    0
}

/// `(*persistConn).roundTrip(pc, req)`: RAX = pc.
fn try_round_trip(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let off = offsets(pid_tgid)?;
    let r = regs(ctx);
    let g = goid(r.r14, &off);
    let tcpconn = read_u64(r.rax + off.persist_conn_conn + 8)?;
    send(pid_tgid, GO_ROUND_TRIP, g, r.rax, tcpconn_fd(tcpconn, &off));
    Some(())
}

#[uprobe]
pub fn tagger_go_round_trip_ret(ctx: ProbeContext) -> u32 {
    let _ = try_done(&ctx, GO_ROUND_TRIP_DONE);
    0
}

#[uprobe]
pub fn tagger_go_newproc(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if offsets(pid_tgid).is_some() {
        // newproc1(fn, callergp, callerpc): RBX = callergp. Copied to the
        // stack first: map helpers do not take context pointers.
        // SAFETY: a load from the context the verifier checks.
        let parent: u64 = unsafe { core::ptr::read_volatile(&raw const (*ctx.regs).rbx) };
        let _ = TAGGER_GO_NEWPROC.insert(&pid_tgid, &parent, 0);
    }
    0
}

#[uprobe]
pub fn tagger_go_newproc_ret(ctx: ProbeContext) -> u32 {
    let _ = try_newproc_ret(&ctx);
    0
}

/// At newproc1's RET: RAX = the new g, its goid already set.
fn try_newproc_ret(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let off = offsets(pid_tgid)?;
    // SAFETY: plain value copied out at once.
    let parent = unsafe { TAGGER_GO_NEWPROC.get(&pid_tgid) }.copied()?;
    let _ = TAGGER_GO_NEWPROC.remove(&pid_tgid);
    let child = goid(regs(ctx).rax, &off);
    send(pid_tgid, GO_NEWPROC, goid(parent, &off), child, -1);
    Some(())
}

#[uprobe]
pub fn tagger_go_goexit(ctx: ProbeContext) -> u32 {
    let _ = try_done(&ctx, GO_EXIT);
    0
}

/// The goroutine that made the current syscall: the g in R14 when it
/// entered the kernel (Go keeps g in R14 down to `Syscall6`'s SYSCALL).
#[inline(always)]
fn syscall_g() -> u64 {
    // SAFETY: the helpers return pointers the verifier knows by BTF.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        core::ptr::read_volatile(regs.add(REG_R14).cast::<u64>())
    }
}

#[inline(always)]
fn socket_io(kind: u32, direction: Direction, bound: u64) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let off = offsets(pid_tgid)?;
    let buffer = syscall_buffer(direction)?;
    let mut len = if buffer.len < bound {
        buffer.len
    } else {
        bound
    };
    if len > GO_CAPTURE_BYTES as u64 {
        len = GO_CAPTURE_BYTES as u64;
    }
    let mut event = GoEvent {
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid,
        goid: goid(syscall_g(), &off),
        aux: 0,
        kind,
        fd: buffer.fd as i32,
        len: 0,
        _pad: 0,
        data: [0; GO_CAPTURE_BYTES],
    };
    if len > 0 {
        // SAFETY: `len` is at most the array's size; the helper checks the
        // user address.
        let rc = unsafe {
            probe_read_raw(
                event.data.as_mut_ptr().cast::<c_void>(),
                len as u32,
                buffer.addr as *const c_void,
            )
        };
        if rc == 0 {
            event.len = len as u32;
        }
    }
    let _ = TAGGER_GO_EVENTS.output::<GoEvent>(&event, BPF_RB_NO_WAKEUP);
    Some(())
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn tagger_go_sock_recv(ctx: BtfTracePointContext) -> i32 {
    let received = i64::from(ctx.arg::<u64>(1) as i32);
    if received > 0 && ctx.arg::<u64>(2) & MSG_PEEK == 0 {
        let _ = socket_io(GO_READ, Direction::Receive, received as u64);
    }
    0
}

/// `tcp_sendmsg_locked(sk, msg, skb, size_goal)`: before the bytes are queued.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tagger_go_tcp_send(_ctx: BtfTracePointContext) -> i32 {
    let _ = socket_io(GO_WRITE, Direction::Send, u64::MAX);
    0
}

//! Propagation through unmodified apps, from syscall tracepoints.
//!
//! * A pod thread that **reads** bytes starting an HTTP request opens an
//!   inbound context (a `seq`), and the bytes go to userspace, which parses
//!   the lane and pass-through headers.
//! * When a pod thread **writes** the start of an HTTP request on a socket
//!   the connect hook redirected, the thread's open context is tagged onto
//!   that socket (by cookie) for the proxy to apply to exactly that request.
//! * When the thread **writes** an HTTP response, its context ends.
//!
//! Every program returns at once for threads outside pod cgroups, and for
//! pod threads whose bytes are not the start of an HTTP message: that path is
//! a helper call, a map lookup and an 8-byte read.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_probe_read_user, bpf_ringbuf_output},
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    EbpfContext,
    programs::TracePointContext,
};
use tagger_common::{
    CAPTURE_BYTES, EVENT_FIRST, EVENTS_RING_BYTES, InboundEvent, LEAF_AFTER_REQUESTS, MAX_CAPTURE_PER_REQUEST,
    MAX_FLOWS, RequestTag, TAG_CONCURRENT, TAG_UNSEEN, stat,
};

use crate::bump;

/// Offsets in the syscall tracepoints' records (see their `format` files):
/// every syscall here has fd at 16, the buffer at 24; exits have ret at 16.
const ARG_FD: usize = 16;
const ARG_BUF: usize = 24;
const EXIT_RET: usize = 16;

const MAX_THREADS: u32 = 65_536;

/// cgroup ids of pods whose traffic tagger routes.
#[map]
static TAGGER_POD_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(8192, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct ReadArgs {
    fd: u64,
    buf: u64,
}

/// read()/recvfrom() arguments between entry and exit, by thread. A plain
/// (preallocated) hash: every pod read passes here, and each entry lives
/// only for one syscall.
#[map]
static TAGGER_READ_ARGS: HashMap<u64, ReadArgs> = HashMap::with_max_entries(MAX_THREADS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct ThreadState {
    /// The open inbound request (the newest when several are open).
    seq: u64,
    /// The socket it came on.
    fd: u32,
    /// Inbound requests read and not yet answered.
    open: u32,
    /// Bytes of the current request sent to userspace.
    captured: u32,
    /// Set while more than one request is open on this thread.
    concurrent: u32,
}

#[map]
static TAGGER_THREADS: LruHashMap<u64, ThreadState> = LruHashMap::with_max_entries(MAX_THREADS, 0);

/// Per process (tgid): a leaf service (one that has served many requests
/// and never called a managed service) needs no inbound context, so its
/// reads are not captured, which keeps the per-read cost of the most common
/// pods low. Its first managed call ends leaf mode.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcessState {
    inbound_requests: u32,
    /// 1 once the process made a redirected connect.
    calls_out: u32,
    /// 1 while reads are not captured.
    leaf: u32,
    _pad: u32,
    /// When leaf mode ended (ns); requests written soon after are marked
    /// `TAG_UNSEEN`.
    woke_ns: u64,
}

#[map]
pub(crate) static TAGGER_PROCESSES: LruHashMap<u32, ProcessState> = LruHashMap::with_max_entries(16_384, 0);

/// How long after leaving leaf mode outbound requests may lack their cause.
const WAKE_GRACE_NS: u64 = 2_000_000_000;

/// Called by the connect hook when a process's connect is redirected.
#[inline(always)]
pub(crate) fn note_call_out(pid_tgid: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(process) = TAGGER_PROCESSES.get_ptr_mut(&tgid) {
        // SAFETY: map value, valid while this program runs.
        let process = unsafe { &mut *process };
        if process.leaf != 0 {
            process.leaf = 0;
            process.woke_ns = unsafe { bpf_ktime_get_ns() };
        }
        process.calls_out = 1;
    } else {
        let fresh = ProcessState { inbound_requests: 0, calls_out: 1, leaf: 0, _pad: 0, woke_ns: 0 };
        let _ = TAGGER_PROCESSES.insert(&tgid, &fresh, 0);
    }
}

#[inline(always)]
fn is_leaf(pid_tgid: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain value read.
    unsafe { TAGGER_PROCESSES.get(&tgid) }.is_some_and(|p| p.leaf != 0)
}

/// Counts an inbound request; a process that only serves becomes a leaf.
#[inline(always)]
fn count_inbound(pid_tgid: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(process) = TAGGER_PROCESSES.get_ptr_mut(&tgid) {
        // SAFETY: as above.
        let process = unsafe { &mut *process };
        process.inbound_requests = process.inbound_requests.saturating_add(1);
        if process.calls_out == 0 && process.inbound_requests >= LEAF_AFTER_REQUESTS {
            process.leaf = 1;
        }
    } else {
        let fresh = ProcessState { inbound_requests: 1, calls_out: 0, leaf: 0, _pad: 0, woke_ns: 0 };
        let _ = TAGGER_PROCESSES.insert(&tgid, &fresh, 0);
    }
}

/// Did the process leave leaf mode a moment ago?
#[inline(always)]
fn just_woke(pid_tgid: u64, now: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain value read.
    unsafe { TAGGER_PROCESSES.get(&tgid) }.is_some_and(|p| p.woke_ns != 0 && now.saturating_sub(p.woke_ns) < WAKE_GRACE_NS)
}

/// connect() in progress, by thread: the fd, for the connect hook.
#[map]
pub(crate) static TAGGER_CONNECTING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_THREADS, 0);

/// Redirected sockets by (tgid << 32 | fd), to their cookie.
#[map]
pub(crate) static TAGGER_SOCKFD: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// The context of the newest request written on each redirected socket.
#[map]
static TAGGER_REQUEST_TAGS: LruHashMap<u64, RequestTag> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
static TAGGER_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Where an event is assembled before it goes into the ring (one per CPU).
#[map]
static TAGGER_SCRATCH: PerCpuArray<InboundEvent> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of an `InboundEvent` before `data`.
const EVENT_HEADER_BYTES: u64 = 32;

#[inline(always)]
fn in_pod() -> bool {
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: read-only lookup of a plain value.
    unsafe { TAGGER_POD_CGROUPS.get(&cgroup) }.is_some()
}

#[inline(always)]
pub(crate) fn sockfd_key(pid_tgid: u64, fd: u32) -> u64 {
    (pid_tgid & 0xffff_ffff_0000_0000) | u64::from(fd)
}

/// The first 8 bytes at a user address, as a little-endian integer.
#[inline(always)]
fn head(buf: u64) -> Option<u64> {
    let mut out: u64 = 0;
    // SAFETY: the helper checks the user address and fails cleanly.
    let rc = unsafe { bpf_probe_read_user((&mut out as *mut u64).cast(), 8, buf as *const _) };
    (rc == 0).then_some(out)
}

const fn word(text: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*text)
}

/// Does a message start like an HTTP/1 request? The first four bytes of
/// the methods apps send; userspace parses properly.
#[inline(always)]
fn is_request_start(head: u64) -> bool {
    let first = head as u32;
    first == word(b"GET ")
        || first == word(b"POST")
        || first == word(b"PUT ")
        || first == word(b"HEAD")
        || first == word(b"DELE")
        || first == word(b"PATC")
        || first == word(b"OPTI")
}

/// "HTTP/" starts a response.
#[inline(always)]
fn is_response_start(head: u64) -> bool {
    head as u32 == word(b"HTTP") && (head >> 32) as u8 == b'/'
}

/// Do not wake the reader on submit: waking costs microseconds per event.
/// Userspace drains the ring every few milliseconds, and at once when the
/// proxy needs a context that has not arrived yet.
const BPF_RB_NO_WAKEUP: u64 = 1;
/// Chunks of one read sent at most (CAPTURE_BYTES each).
const MAX_CHUNKS: u64 = 4;

/// Sends up to MAX_CHUNKS chunks of a read to userspace; returns the bytes sent.
/// Inlined: BPF functions take at most five arguments.
#[inline(always)]
fn emit_read(pid_tgid: u64, seq: u64, fd: u32, buf: u64, len: u64, mut flags: u32, budget: u32) -> u32 {
    let mut sent: u32 = 0;
    for chunk in 0..MAX_CHUNKS {
        let offset = chunk * CAPTURE_BYTES as u64;
        if offset >= len || sent >= budget {
            break;
        }
        let n = emit(pid_tgid, seq, fd, buf + offset, len - offset, flags);
        if n == 0 {
            break;
        }
        sent += n;
        flags &= !EVENT_FIRST;
    }
    sent
}

#[inline(always)]
fn emit(pid_tgid: u64, seq: u64, fd: u32, buf: u64, len: u64, flags: u32) -> u32 {
    // Built in a per-CPU scratch slot, then copied into the ring at its real
    // size: a 100-byte request takes 136 bytes of ring, not 4 KiB.
    let Some(event) = TAGGER_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let n: u32 = if len > CAPTURE_BYTES as u64 { CAPTURE_BYTES as u32 } else { len as u32 };
    // SAFETY: `event` is this CPU's scratch slot, valid during the program.
    let copied = unsafe {
        (*event).pid_tgid = pid_tgid;
        (*event).seq = seq;
        (*event).fd = fd;
        (*event).len = n;
        (*event).flags = flags;
        (*event)._pad = 0;
        bpf_probe_read_user((*event).data.as_mut_ptr().cast(), n, buf as *const _)
    };
    if copied != 0 {
        return 0;
    }
    let size = EVENT_HEADER_BYTES + u64::from(n);
    // SAFETY: the map pointer is our ring buffer's definition; `size` is at
    // most the scratch slot's size.
    let rc = unsafe {
        bpf_ringbuf_output(
            (&raw const TAGGER_EVENTS).cast_mut().cast(),
            event.cast(),
            size,
            BPF_RB_NO_WAKEUP,
        )
    };
    if rc < 0 {
        bump(stat::EVENTS_DROPPED);
        return 0;
    }
    n
}

/// A pod thread read `len` bytes at `buf` from `fd`.
fn on_read(pid_tgid: u64, fd: u32, buf: u64, len: u64) {
    let Some(first) = head(buf) else { return };
    if is_request_start(first) {
        bump(stat::INBOUND_REQUESTS);
        count_inbound(pid_tgid);
        let seq = unsafe { bpf_ktime_get_ns() };
        // SAFETY: plain values copied out at once.
        let woke_ns = unsafe { TAGGER_PROCESSES.get(&((pid_tgid >> 32) as u32)) }.map_or(0, |p| p.woke_ns);
        let open = match unsafe { TAGGER_THREADS.get(&pid_tgid) } {
            // State from before leaf mode is stale: responses written while
            // a leaf were not seen.
            Some(previous) if previous.seq > woke_ns => previous.open + 1,
            _ => 1,
        };
        let captured = emit_read(pid_tgid, seq, fd, buf, len, EVENT_FIRST, MAX_CAPTURE_PER_REQUEST);
        let state = ThreadState {
            seq,
            fd,
            open,
            captured,
            concurrent: u32::from(open > 1),
        };
        let _ = TAGGER_THREADS.insert(&pid_tgid, &state, 0);
        return;
    }
    // More of a header block that did not fit in one read.
    if let Some(state) = TAGGER_THREADS.get_ptr_mut(&pid_tgid) {
        // SAFETY: the map value lives while we hold the pointer in this program.
        let state = unsafe { &mut *state };
        if state.open > 0 && state.fd == fd && state.captured < MAX_CAPTURE_PER_REQUEST {
            let budget = MAX_CAPTURE_PER_REQUEST - state.captured;
            state.captured += emit_read(pid_tgid, state.seq, fd, buf, len, 0, budget);
        }
    }
}

/// A pod thread writes to `fd`, the first bytes at `buf`.
fn on_write(pid_tgid: u64, fd: u32, buf: u64) {
    let Some(first) = head(buf) else { return };
    let key = sockfd_key(pid_tgid, fd);
    // SAFETY: plain value copied out at once.
    if let Some(cookie) = unsafe { TAGGER_SOCKFD.get(&key) }.copied() {
        if !is_request_start(first) {
            return;
        }
        let now = unsafe { bpf_ktime_get_ns() };
        let (seq, flags) = match unsafe { TAGGER_THREADS.get(&pid_tgid) } {
            Some(state) if state.open > 0 => (state.seq, if state.concurrent != 0 { TAG_CONCURRENT } else { 0 }),
            // No open request seen: either none, or unseen in leaf mode.
            _ => (0, if just_woke(pid_tgid, now) { TAG_UNSEEN } else { 0 }),
        };
        let tag = RequestTag {
            pid_tgid,
            seq,
            written_ns: now,
            flags,
            _pad: 0,
        };
        if TAGGER_REQUEST_TAGS.insert(&cookie, &tag, 0).is_ok() {
            bump(stat::OUTBOUND_TAGGED);
        }
        return;
    }
    if is_response_start(first)
        && let Some(state) = TAGGER_THREADS.get_ptr_mut(&pid_tgid)
    {
        // SAFETY: as above.
        let state = unsafe { &mut *state };
        if state.open > 0 {
            state.open -= 1;
        }
        if state.open == 0 {
            state.concurrent = 0;
        }
    }
}

/// A syscall argument from the tracepoint record. The record is program
/// context, so a plain load does (no helper call); the verifier checks the
/// offset against the record's size.
#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> Option<u64> {
    // SAFETY: offsets come from the tracepoints' format files; all are
    // 8-byte fields inside the record.
    Some(unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<u64>()) })
}

fn stash_read(ctx: &TracePointContext) {
    if !in_pod() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_leaf(pid_tgid) {
        return;
    }
    let (Some(fd), Some(buf)) = (arg(ctx, ARG_FD), arg(ctx, ARG_BUF)) else {
        return;
    };
    let _ = TAGGER_READ_ARGS.insert(&pid_tgid, &ReadArgs { fd, buf }, 0);
}

fn finish_read(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain value copied out at once.
    let Some(args) = (unsafe { TAGGER_READ_ARGS.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = TAGGER_READ_ARGS.remove(&pid_tgid);
    match arg(ctx, EXIT_RET) {
        Some(ret) if (ret as i64) > 0 => on_read(pid_tgid, args.fd as u32, args.buf, ret),
        _ => {}
    }
}

/// The pod thread to trace, unless its process is a leaf: a leaf has no
/// redirected sockets and no captured requests, so its writes and closes
/// need nothing either.
#[inline(always)]
fn traced_thread() -> Option<u64> {
    if !in_pod() {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    (!is_leaf(pid_tgid)).then_some(pid_tgid)
}

fn write_common(ctx: &TracePointContext) {
    let Some(pid_tgid) = traced_thread() else { return };
    if let (Some(fd), Some(buf)) = (arg(ctx, ARG_FD), arg(ctx, ARG_BUF)) {
        on_write(pid_tgid, fd as u32, buf);
    }
}

#[tracepoint]
pub fn tagger_enter_read(ctx: TracePointContext) -> u32 {
    stash_read(&ctx);
    0
}

#[tracepoint]
pub fn tagger_exit_read(ctx: TracePointContext) -> u32 {
    finish_read(&ctx);
    0
}

#[tracepoint]
pub fn tagger_enter_recvfrom(ctx: TracePointContext) -> u32 {
    stash_read(&ctx);
    0
}

#[tracepoint]
pub fn tagger_exit_recvfrom(ctx: TracePointContext) -> u32 {
    finish_read(&ctx);
    0
}

#[tracepoint]
pub fn tagger_enter_write(ctx: TracePointContext) -> u32 {
    write_common(&ctx);
    0
}

#[tracepoint]
pub fn tagger_enter_sendto(ctx: TracePointContext) -> u32 {
    write_common(&ctx);
    0
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

#[tracepoint]
pub fn tagger_enter_writev(ctx: TracePointContext) -> u32 {
    let Some(pid_tgid) = traced_thread() else { return 0 };
    let (Some(fd), Some(vec)) = (arg(&ctx, ARG_FD), arg(&ctx, ARG_BUF)) else {
        return 0;
    };
    let mut first = IoVec { base: 0, len: 0 };
    // SAFETY: the helper checks the user address.
    let rc = unsafe { bpf_probe_read_user((&mut first as *mut IoVec).cast(), 16, vec as *const _) };
    if rc == 0 && first.len >= 8 {
        on_write(pid_tgid, fd as u32, first.base);
    }
    0
}

#[tracepoint]
pub fn tagger_enter_connect(ctx: TracePointContext) -> u32 {
    if in_pod()
        && let Some(fd) = arg(&ctx, ARG_FD)
    {
        let _ = TAGGER_CONNECTING.insert(&bpf_get_current_pid_tgid(), &(fd as u32), 0);
    }
    0
}

#[tracepoint]
pub fn tagger_exit_connect(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: lookup of a plain value.
    if unsafe { TAGGER_CONNECTING.get(&pid_tgid) }.is_some() {
        let _ = TAGGER_CONNECTING.remove(&pid_tgid);
    }
    0
}

#[tracepoint]
pub fn tagger_enter_close(ctx: TracePointContext) -> u32 {
    if let Some(pid_tgid) = traced_thread()
        && let Some(fd) = arg(&ctx, ARG_FD)
    {
        let key = sockfd_key(pid_tgid, fd as u32);
        // SAFETY: plain value copied out.
        if let Some(cookie) = unsafe { TAGGER_SOCKFD.get(&key) }.copied() {
            let _ = TAGGER_REQUEST_TAGS.remove(&cookie);
            let _ = TAGGER_SOCKFD.remove(&key);
        }
    }
    0
}

/// A thread exits: its state goes; when it is the process's main thread,
/// the process's too (so a new process that reuses the pid starts afresh).
#[tracepoint]
pub fn tagger_task_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: lookups of plain values.
    if unsafe { TAGGER_THREADS.get(&pid_tgid) }.is_some() {
        let _ = TAGGER_THREADS.remove(&pid_tgid);
    }
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 == tgid && unsafe { TAGGER_PROCESSES.get(&tgid) }.is_some() {
        let _ = TAGGER_PROCESSES.remove(&tgid);
    }
    0
}

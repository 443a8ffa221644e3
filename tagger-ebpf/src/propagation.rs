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
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_probe_read_user,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, RingBuf},
    programs::TracePointContext,
};
use tagger_common::{
    CAPTURE_BYTES, EVENT_FIRST, EVENTS_RING_BYTES, InboundEvent, MAX_CAPTURE_PER_REQUEST, MAX_FLOWS, RequestTag,
    TAG_CONCURRENT, stat,
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

/// read()/recvfrom() arguments between entry and exit, by thread.
#[map]
static TAGGER_READ_ARGS: LruHashMap<u64, ReadArgs> = LruHashMap::with_max_entries(MAX_THREADS, 0);

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

fn emit(pid_tgid: u64, seq: u64, fd: u32, buf: u64, len: u64, flags: u32) -> u32 {
    let Some(mut entry) = TAGGER_EVENTS.reserve::<InboundEvent>(0) else {
        bump(stat::EVENTS_DROPPED);
        return 0;
    };
    let n: u32 = if len > CAPTURE_BYTES as u64 { CAPTURE_BYTES as u32 } else { len as u32 };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring-buffer slot of our size.
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
        entry.discard(0);
        return 0;
    }
    entry.submit(0);
    n
}

/// A pod thread read `len` bytes at `buf` from `fd`.
fn on_read(pid_tgid: u64, fd: u32, buf: u64, len: u64) {
    let Some(first) = head(buf) else { return };
    if is_request_start(first) {
        bump(stat::INBOUND_REQUESTS);
        let seq = unsafe { bpf_ktime_get_ns() };
        // SAFETY: plain value copied out at once.
        let open = match unsafe { TAGGER_THREADS.get(&pid_tgid) } {
            Some(previous) => previous.open + 1,
            None => 1,
        };
        let captured = emit(pid_tgid, seq, fd, buf, len, EVENT_FIRST);
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
            state.captured += emit(pid_tgid, state.seq, fd, buf, len, 0);
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
        let (seq, flags) = match unsafe { TAGGER_THREADS.get(&pid_tgid) } {
            Some(state) if state.open > 0 => (state.seq, if state.concurrent != 0 { TAG_CONCURRENT } else { 0 }),
            _ => (0, 0),
        };
        let tag = RequestTag {
            pid_tgid,
            seq,
            written_ns: unsafe { bpf_ktime_get_ns() },
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

#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> Option<u64> {
    // SAFETY: offsets come from the tracepoints' format files.
    unsafe { ctx.read_at::<u64>(offset) }.ok()
}

fn stash_read(ctx: &TracePointContext) {
    if !in_pod() {
        return;
    }
    let (Some(fd), Some(buf)) = (arg(ctx, ARG_FD), arg(ctx, ARG_BUF)) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
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

fn write_common(ctx: &TracePointContext) {
    if !in_pod() {
        return;
    }
    if let (Some(fd), Some(buf)) = (arg(ctx, ARG_FD), arg(ctx, ARG_BUF)) {
        on_write(bpf_get_current_pid_tgid(), fd as u32, buf);
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
    if !in_pod() {
        return 0;
    }
    let (Some(fd), Some(vec)) = (arg(&ctx, ARG_FD), arg(&ctx, ARG_BUF)) else {
        return 0;
    };
    let mut first = IoVec { base: 0, len: 0 };
    // SAFETY: the helper checks the user address.
    let rc = unsafe { bpf_probe_read_user((&mut first as *mut IoVec).cast(), 16, vec as *const _) };
    if rc == 0 && first.len >= 8 {
        on_write(bpf_get_current_pid_tgid(), fd as u32, first.base);
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
    if in_pod()
        && let Some(fd) = arg(&ctx, ARG_FD)
    {
        let _ = TAGGER_SOCKFD.remove(&sockfd_key(bpf_get_current_pid_tgid(), fd as u32));
    }
    0
}

//! Propagation through unmodified apps, from socket-level BTF tracepoints.
//!
//! * `sock_recv_length` (after a socket receive, in the reading thread): a
//!   pod thread that **reads** bytes starting an HTTP request opens an
//!   inbound context (a `seq`), and the bytes go to userspace, which parses
//!   the lane and pass-through headers.
//! * `tcp_sendmsg_locked` (in the sending thread, before the bytes are
//!   queued): when a pod thread **writes** the start of an HTTP request on a
//!   socket the connect hook redirected, the thread's open context is tagged
//!   onto that socket (by cookie) for the proxy to apply to exactly that
//!   request. It runs before the bytes can reach the proxy, so the tag is
//!   always there first.
//! * `sock_send_length` (after a socket send): when the thread wrote an HTTP
//!   response, its context ends.
//!
//! Why these and not syscall tracepoints: a syscall tracepoint, once
//! enabled, sends every syscall of every task on the node through the
//! kernel's slow tracing entry; these fire only for socket I/O. The bytes are
//! found through the syscall's own arguments (`bpf_task_pt_regs`), so read,
//! recvfrom, recvmsg, readv, write, sendto, sendmsg and writev are all seen.
//!
//! Every program first asks the socket its role (socket-local storage, set
//! by sock_ops): a receive matters only on a socket a pod accepted, a send
//! only there or on a socket redirected to the proxy. Everything else on the
//! node ends after that one lookup.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{
            bpf_get_current_task_btf, bpf_get_socket_cookie, bpf_probe_read_user,
            bpf_ringbuf_output, bpf_ringbuf_query, bpf_sk_storage_get, bpf_task_pt_regs,
        },
    },
    macros::{btf_map, btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use tagger_common::{
    BPF_F_MMAPABLE, CAPTURE_BYTES, EVENT_FIELDS, EVENT_FIRST, EVENTS_RING_BYTES, InboundEvent,
    LEAF_AFTER_REQUESTS, MAX_CAPTURE_PER_REQUEST, MAX_FLOWS, MAX_POD_SLOTS, RequestTag, StreamKey,
    TAG_CONCURRENT, TAG_UNSEEN, TAG_UNTRUSTED, kind, stat,
};

use crate::{bump, golang, procs};

const MAX_THREADS: u32 = 65_536;
/// `recvmsg` flag: the bytes stay queued and will be read again.
const MSG_PEEK: u64 = 2;

/// cgroup ids of pods whose traffic tagger routes, to the pod's slot in
/// `TAGGER_POD_TAGGED` (assigned by the daemon, never 0).
#[map]
static TAGGER_POD_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_POD_SLOTS, 0);

/// By pod slot: 1 once a thread of the pod wrote a request that carries an
/// inbound context. The proxy reads it as memory (mmap, no syscall) and asks
/// for request tags only on connections from such pods: a pure client pays
/// no map lookup per request. `u64` values: array elements are 8-byte
/// strided whatever their size, and userspace indexes the memory by value.
#[map]
static TAGGER_POD_TAGGED: Array<u64> = Array::with_max_entries(MAX_POD_SLOTS, BPF_F_MMAPABLE);

/// What a pod's TCP socket is to propagation, kept on the socket itself
/// (socket-local storage: found from the socket in a few loads, no hashing,
/// freed with the socket). Set by sock_ops; every other socket has none, so
/// the programs below end after one lookup for all traffic that is not a
/// pod's inbound request or redirected call.
#[btf_map]
static TAGGER_SOCK_ROLE: SkStorage<u32> = SkStorage::new();
/// Accepted by a pod: its inbound requests are read here.
pub(crate) const ROLE_PASSIVE: u32 = 1;
/// Connected by a pod and redirected to the proxy: its calls go out here.
pub(crate) const ROLE_REDIRECTED: u32 = 2;
/// A redirected socket the pod opened with the HTTP/2 preface.
pub(crate) const ROLE_REDIRECTED_H2: u32 = 3;

/// The role of socket `sk` (a kernel `struct sock *`), 0 for none.
#[inline(always)]
fn sock_role(sk: *mut c_void) -> u32 {
    // SAFETY: `sk` is a socket the kernel handed the program; the helper
    // returns the socket's value or null.
    let role = unsafe {
        bpf_sk_storage_get(
            (&raw const TAGGER_SOCK_ROLE).cast_mut().cast(),
            sk,
            core::ptr::null_mut(),
            0,
        )
    } as *const u32;
    // SAFETY: a non-null value from the helper is the socket's storage, valid while this program runs.
    if role.is_null() { 0 } else { unsafe { *role } }
}

/// Gives socket `sk` a role (sock_ops, on a full socket).
#[inline(always)]
pub(crate) fn set_sock_role(sk: *mut c_void, role: u32) {
    let mut value = role;
    // SAFETY: as above; with F_CREATE the helper stores `value` if the
    // socket had no role yet.
    let slot = unsafe {
        bpf_sk_storage_get(
            (&raw const TAGGER_SOCK_ROLE).cast_mut().cast(),
            sk,
            (&mut value as *mut u32).cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    } as *mut u32;
    if !slot.is_null() {
        // SAFETY: the socket's storage, valid while this program runs.
        unsafe { *slot = role };
    }
}

/// Redirected HTTP/2 connections of pods' processes: `conn_key(tgid, fd)` to
/// the socket's cookie, for the stream tags grpc.rs writes from the fd.
/// Written at the preface, before any stream; a reused fd's next preface
/// replaces it.
#[map]
pub(crate) static TAGGER_H2_SOCKETS: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Tags of single streams on redirected HTTP/2 connections (grpc.rs), taken
/// by the proxy for exactly that stream.
#[map]
pub(crate) static TAGGER_STREAM_TAGS: LruHashMap<StreamKey, RequestTag> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// The context of the newest request written on each redirected socket.
#[map]
pub(crate) static TAGGER_REQUEST_TAGS: LruHashMap<u64, RequestTag> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);

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
    /// Set from tagging a request until its send returns: a large send
    /// passes `tcp_sendmsg_locked` once per chunk and is tagged once.
    sending: u32,
    _pad: u32,
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
    /// 1 once it read an HTTP/2 preface on an accepted socket: it serves
    /// multiplexed requests, which no thread reads one at a time.
    multiplexed: u32,
    /// When leaf mode ended (ns); requests written soon after are marked
    /// `TAG_UNSEEN`.
    woke_ns: u64,
}

#[map]
pub(crate) static TAGGER_PROCESSES: LruHashMap<u32, ProcessState> =
    LruHashMap::with_max_entries(16_384, 0);

/// How long after leaving leaf mode outbound requests may lack their cause.
const WAKE_GRACE_NS: u64 = 2_000_000_000;

/// Called by the connect hook when a process's connect is redirected.
#[inline(always)]
pub(crate) fn note_call_out(pid_tgid: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(process) = TAGGER_PROCESSES.get_ptr_mut(tgid) {
        // SAFETY: map value, valid while this program runs.
        let process = unsafe { &mut *process };
        if process.leaf != 0 {
            process.leaf = 0;
            // SAFETY: a helper without arguments.
            process.woke_ns = unsafe { bpf_ktime_get_ns() };
        }
        process.calls_out = 1;
    } else {
        let fresh = ProcessState {
            inbound_requests: 0,
            calls_out: 1,
            leaf: 0,
            multiplexed: 0,
            woke_ns: 0,
        };
        let _ = TAGGER_PROCESSES.insert(tgid, fresh, 0);
    }
}

#[inline(always)]
pub(crate) fn is_leaf(pid_tgid: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain value read.
    unsafe { TAGGER_PROCESSES.get(tgid) }.is_some_and(|p| p.leaf != 0)
}

/// Counts an inbound request; a process that only serves becomes a leaf.
#[inline(always)]
pub(crate) fn count_inbound(pid_tgid: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(process) = TAGGER_PROCESSES.get_ptr_mut(tgid) {
        // SAFETY: as above.
        let process = unsafe { &mut *process };
        process.inbound_requests = process.inbound_requests.saturating_add(1);
        if process.calls_out == 0 && process.inbound_requests >= LEAF_AFTER_REQUESTS {
            process.leaf = 1;
        }
    } else {
        let fresh = ProcessState {
            inbound_requests: 1,
            calls_out: 0,
            leaf: 0,
            multiplexed: 0,
            woke_ns: 0,
        };
        let _ = TAGGER_PROCESSES.insert(tgid, fresh, 0);
    }
}

/// Did the process leave leaf mode a moment ago?
#[inline(always)]
fn just_woke(pid_tgid: u64, now: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain value read.
    unsafe { TAGGER_PROCESSES.get(tgid) }
        .is_some_and(|p| p.woke_ns != 0 && now.saturating_sub(p.woke_ns) < WAKE_GRACE_NS)
}

/// Is the cgroup a pod's?
#[inline(always)]
pub(crate) fn in_pod(cgroup_id: u64) -> bool {
    // SAFETY: plain value read.
    unsafe { TAGGER_POD_CGROUPS.get(cgroup_id) }.is_some()
}

/// A process execs: what was counted for its old image goes.
#[inline(always)]
pub(crate) fn forget_process(tgid: u32) {
    // SAFETY: plain value read.
    if unsafe { TAGGER_PROCESSES.get(tgid) }.is_some() {
        let _ = TAGGER_PROCESSES.remove(tgid);
    }
}

/// The process read an HTTP/2 preface on an accepted socket: it serves.
#[inline(always)]
pub(crate) fn note_multiplexed(pid_tgid: u64) {
    count_inbound(pid_tgid);
    if let Some(process) = TAGGER_PROCESSES.get_ptr_mut((pid_tgid >> 32) as u32) {
        // SAFETY: map value, valid while this program runs.
        unsafe { (*process).multiplexed = 1 };
    }
}

#[inline(always)]
fn is_multiplexed(pid_tgid: u64) -> bool {
    // SAFETY: plain value read.
    unsafe { TAGGER_PROCESSES.get((pid_tgid >> 32) as u32) }.is_some_and(|p| p.multiplexed != 0)
}

/// An untrusted tag for a request whose cause cannot be told, when the
/// process serves inbound requests (one of them may have caused it); none
/// for a pure client, whose requests have no cause to inherit.
#[inline(always)]
pub(crate) fn untrusted_if_serving(pid_tgid: u64) -> Option<(u64, u64, u32)> {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain value read.
    unsafe { TAGGER_PROCESSES.get(tgid) }
        .is_some_and(|p| p.inbound_requests > 0)
        .then_some((pid_tgid, 0, TAG_UNTRUSTED))
}

#[map]
static TAGGER_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Where an event is assembled before it goes into the ring (one per CPU).
#[map]
static TAGGER_SCRATCH: PerCpuArray<InboundEvent> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of an `InboundEvent` before `data`.
const EVENT_HEADER_BYTES: u64 = 32;

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
pub(crate) fn is_request_start(head: u64) -> bool {
    let first = head as u32;
    first == word(b"GET ")
        || first == word(b"POST")
        || first == word(b"PUT ")
        || first == word(b"HEAD")
        || first == word(b"DELE")
        || first == word(b"PATC")
        || first == word(b"OPTI")
}

/// "PRI * HT", the start of the HTTP/2 connection preface (RFC 9113 3.4).
#[inline(always)]
pub(crate) fn is_h2_preface(head: u64) -> bool {
    head == u64::from_le_bytes(*b"PRI * HT")
}

/// "HTTP/" starts a response.
#[inline(always)]
fn is_response_start(head: u64) -> bool {
    head as u32 == word(b"HTTP") && (head >> 32) as u8 == b'/'
}

/// Do not wake the reader on submit: waking costs microseconds per event.
/// Userspace drains the ring when the proxy needs a context that has not
/// arrived yet, and every 100 ms; the ring wakes it only when it is a
/// quarter full, long before it could overflow.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `bpf_ringbuf_query`: bytes submitted and not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
const WAKE_AT_BYTES: u64 = EVENTS_RING_BYTES as u64 / 4;
/// Chunks of one read sent at most (CAPTURE_BYTES each).
const MAX_CHUNKS: u64 = 4;

/// Sends up to MAX_CHUNKS chunks of a read to userspace; returns the bytes sent.
/// Inlined: BPF functions take at most five arguments.
#[inline(always)]
pub(crate) fn emit_read(
    pid_tgid: u64,
    seq: u64,
    fd: u32,
    buf: u64,
    len: u64,
    mut flags: u32,
    budget: u32,
) -> u32 {
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
    let n: u32 = if len > CAPTURE_BYTES as u64 {
        CAPTURE_BYTES as u32
    } else {
        len as u32
    };
    // SAFETY: `event` is this CPU's scratch slot, valid during the program.
    let copied = unsafe {
        fill_header(event, pid_tgid, seq, fd, n, flags);
        bpf_probe_read_user((*event).data.as_mut_ptr().cast(), n, buf as *const _)
    };
    if copied != 0 {
        return 0;
    }
    submit(event, n)
}

/// Sends `n` (at most 7) bytes held in `bytes` (little-endian) as an
/// event: a start the app read in two pieces, or a fixed piece of text.
#[inline(always)]
pub(crate) fn emit_bytes(pid_tgid: u64, seq: u64, fd: u32, bytes: u64, n: u32, flags: u32) -> u32 {
    let Some(event) = TAGGER_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let n = n & 7;
    // SAFETY: as in `emit`; the first 8 data bytes are in bounds.
    unsafe {
        fill_header(event, pid_tgid, seq, fd, n, flags);
        core::ptr::write_unaligned((*event).data.as_mut_ptr().cast::<u64>(), bytes);
    }
    submit(event, n)
}

/// Sends one decoded header field as a `name: value\r\n` line
/// (`EVENT_FIELDS`), both read from user memory; a pseudo-header (`:path`)
/// is not sent. The caller bounds the lengths; the masks show the verifier.
#[inline(always)]
pub(crate) fn emit_line(
    pid_tgid: u64,
    seq: u64,
    fd: u32,
    name: u64,
    name_len: u64,
    value: u64,
    value_len: u64,
) -> Option<()> {
    let event = TAGGER_SCRATCH.get_ptr_mut(0)?;
    let n = (name_len & 0x7f) as usize;
    let v = (value_len & 0x7ff) as usize;
    // SAFETY: `event` is this CPU's scratch slot; every offset written is
    // below 2 + 0x7f + 2 + 0x7ff + 2, inside `data`.
    unsafe {
        let data = (*event).data.as_mut_ptr();
        if bpf_probe_read_user(data.cast(), n as u32, name as *const _) != 0 || *data == b':' {
            return None;
        }
        *data.add(n) = b':';
        *data.add(n + 1) = b' ';
        if bpf_probe_read_user(data.add(n + 2).cast(), v as u32, value as *const _) != 0 {
            return None;
        }
        *data.add(n + 2 + v) = b'\r';
        *data.add(n + 3 + v) = b'\n';
        let len = (n + v + 4) as u32;
        fill_header(event, pid_tgid, seq, fd, len, EVENT_FIELDS);
        submit(event, len);
    }
    Some(())
}

/// # Safety
/// `event` must be this CPU's scratch slot.
#[inline(always)]
unsafe fn fill_header(
    event: *mut InboundEvent,
    pid_tgid: u64,
    seq: u64,
    fd: u32,
    n: u32,
    flags: u32,
) {
    // SAFETY: the caller's pointer is valid for the program's run.
    unsafe {
        (*event).pid_tgid = pid_tgid;
        (*event).seq = seq;
        (*event).fd = fd;
        (*event).len = n;
        (*event).flags = flags;
        (*event)._pad = 0;
    }
}

/// Copies the scratch event, header and `n` data bytes, into the ring.
#[inline(always)]
fn submit(event: *mut InboundEvent, n: u32) -> u32 {
    let size = EVENT_HEADER_BYTES + u64::from(n);
    let ring = (&raw const TAGGER_EVENTS).cast_mut().cast();
    // SAFETY: the map pointer is our ring buffer's definition.
    let pending = unsafe { bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) };
    let wake = if pending >= WAKE_AT_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: as above; `size` is at most the scratch slot's size.
    let rc = unsafe { bpf_ringbuf_output(ring, event.cast(), size, wake) };
    if rc < 0 {
        bump(stat::EVENTS_DROPPED);
        return 0;
    }
    n
}

/// A pod thread read `len` bytes at `buf` from `fd`.
fn on_read(pid_tgid: u64, fd: u32, buf: u64, len: u64) {
    let Some(first) = head(buf) else { return };
    if is_h2_preface(first) {
        // Its streams are read by whichever thread polls the socket (gRPC
        // C core): nothing it sends can be tied to one of them.
        note_multiplexed(pid_tgid);
        return;
    }
    if is_request_start(first) {
        bump(stat::INBOUND_REQUESTS);
        count_inbound(pid_tgid);
        // SAFETY: a helper without arguments.
        let seq = unsafe { bpf_ktime_get_ns() };
        // SAFETY: plain values copied out at once.
        let woke_ns =
            unsafe { TAGGER_PROCESSES.get((pid_tgid >> 32) as u32) }.map_or(0, |p| p.woke_ns);
        let open = match unsafe { TAGGER_THREADS.get(pid_tgid) } {
            // State from before leaf mode is stale: responses written while
            // a leaf were not seen.
            Some(previous) if previous.seq > woke_ns => previous.open + 1,
            _ => 1,
        };
        let captured = emit_read(
            pid_tgid,
            seq,
            fd,
            buf,
            len,
            EVENT_FIRST,
            MAX_CAPTURE_PER_REQUEST,
        );
        let state = ThreadState {
            seq,
            fd,
            open,
            captured,
            concurrent: u32::from(open > 1),
            sending: 0,
            _pad: 0,
        };
        let _ = TAGGER_THREADS.insert(pid_tgid, state, 0);
        return;
    }
    // More of a header block that did not fit in one read.
    if let Some(state) = TAGGER_THREADS.get_ptr_mut(pid_tgid) {
        // SAFETY: the map value lives while we hold the pointer in this program.
        let state = unsafe { &mut *state };
        if state.open > 0 && state.fd == fd && state.captured < MAX_CAPTURE_PER_REQUEST {
            let budget = MAX_CAPTURE_PER_REQUEST - state.captured;
            state.captured += emit_read(pid_tgid, state.seq, fd, buf, len, 0, budget);
        }
    }
}

/// A pod thread read fewer than 8 bytes: the end of the header block of
/// the request it is reading, perhaps (a client that writes slowly).
fn on_short_read(pid_tgid: u64, fd: u32, buf: u64, len: u64) {
    if let Some(state) = TAGGER_THREADS.get_ptr_mut(pid_tgid) {
        // SAFETY: the map value lives while this program runs.
        let state = unsafe { &mut *state };
        if state.open > 0 && state.fd == fd && state.captured < MAX_CAPTURE_PER_REQUEST {
            let budget = MAX_CAPTURE_PER_REQUEST - state.captured;
            state.captured += emit_read(pid_tgid, state.seq, fd, buf, len, 0, budget);
        }
    }
}

/// How the socket I/O being traced was asked for: the syscall's number and
/// arguments, as x86_64 saves them in `struct pt_regs` (a stable ABI).
pub(crate) mod syscall {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    /// Offsets in `struct pt_regs`: first argument, second argument, number.
    pub const REG_DI: usize = 112;
    pub const REG_SI: usize = 104;
    pub const REG_ORIG_AX: usize = 120;
    /// Offset of `msg_iov` in `struct user_msghdr`.
    pub const MSGHDR_IOV: u64 = 16;
}

#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Receive,
    Send,
}

/// The app's first buffer of the syscall doing this socket I/O: fd, address
/// and length (`u64::MAX` when the syscall's return value bounds it).
#[derive(Clone, Copy)]
pub(crate) struct UserBuffer {
    pub(crate) fd: u32,
    pub(crate) addr: u64,
    pub(crate) len: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// The first `iovec` of an array in user memory.
#[inline(always)]
fn first_iovec(fd: u32, iov: u64) -> Option<UserBuffer> {
    let mut first = IoVec { base: 0, len: 0 };
    // SAFETY: the helper checks the user address and fails cleanly.
    let rc =
        unsafe { bpf_probe_read_user((&mut first as *mut IoVec).cast(), 16, iov as *const c_void) };
    (rc == 0).then_some(UserBuffer {
        fd,
        addr: first.base,
        len: first.len,
    })
}

/// Which syscall of the current thread is doing this socket I/O, and its
/// buffer. Sockets are also read and written by the kernel itself (splice,
/// io_uring workers, kTLS): those are not an app's syscall and are skipped.
#[inline(always)]
pub(crate) fn syscall_buffer(direction: Direction) -> Option<UserBuffer> {
    // SAFETY: both helpers return pointers the verifier knows by BTF; loads
    // through them are checked against `struct pt_regs` and cannot fault.
    let (number, fd, arg) = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        (
            core::ptr::read_volatile(regs.add(syscall::REG_ORIG_AX).cast::<u64>()),
            core::ptr::read_volatile(regs.add(syscall::REG_DI).cast::<u64>()) as u32,
            core::ptr::read_volatile(regs.add(syscall::REG_SI).cast::<u64>()),
        )
    };
    match (direction, number) {
        (Direction::Receive, syscall::READ | syscall::RECVFROM)
        | (Direction::Send, syscall::WRITE | syscall::SENDTO) => Some(UserBuffer {
            fd,
            addr: arg,
            len: u64::MAX,
        }),
        (Direction::Receive, syscall::READV) | (Direction::Send, syscall::WRITEV) => {
            first_iovec(fd, arg)
        }
        (Direction::Receive, syscall::RECVMSG) | (Direction::Send, syscall::SENDMSG) => {
            let mut iov: u64 = 0;
            // SAFETY: as above.
            let rc = unsafe {
                bpf_probe_read_user(
                    (&mut iov as *mut u64).cast(),
                    8,
                    (arg + syscall::MSGHDR_IOV) as *const c_void,
                )
            };
            if rc != 0 {
                return None;
            }
            first_iovec(fd, iov)
        }
        _ => None,
    }
}

/// A thread is sending on a TCP socket (before the bytes are queued). On a
/// redirected socket, the start of an HTTP request gets a tag naming the
/// inbound request that caused it, found the way the process's kind says.
fn on_tcp_send(sk: *mut c_void) {
    let role = sock_role(sk);
    if role == ROLE_REDIRECTED_H2 {
        on_h2_send(sk, bpf_get_current_pid_tgid());
        return;
    }
    if role != ROLE_REDIRECTED {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let state = TAGGER_THREADS.get_ptr_mut(pid_tgid);
    // SAFETY: map values live while this program runs.
    if let Some(state) = state
        && unsafe { (*state).sending } != 0
    {
        return;
    }
    let Some(buffer) = syscall_buffer(Direction::Send) else {
        return;
    };
    if buffer.len < 8 {
        return;
    }
    let Some(first) = head(buffer.addr) else {
        return;
    };
    if is_h2_preface(first) {
        on_h2_preface(sk, pid_tgid, buffer.fd);
        return;
    }
    if !is_request_start(first) {
        return;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // The send is being tagged: later passes of the same send are not.
    let state = match state {
        // SAFETY: as above.
        Some(state) => unsafe { &mut *state },
        None => {
            let fresh = ThreadState {
                seq: 0,
                fd: 0,
                open: 0,
                captured: 0,
                concurrent: 0,
                sending: 1,
                _pad: 0,
            };
            let _ = TAGGER_THREADS.insert(pid_tgid, fresh, 0);
            match TAGGER_THREADS.get_ptr_mut(pid_tgid) {
                // SAFETY: as above.
                Some(state) => unsafe { &mut *state },
                None => return,
            }
        }
    };
    state.sending = 1;
    let tag = match procs::kind_of(pid_tgid) {
        Some(kind::THREADS) => thread_tag(state, pid_tgid, now),
        Some(kind::GO) => golang::take_call(pid_tgid, buffer.fd, now),
        None => {
            procs::ask_classify(pid_tgid);
            untrusted_if_serving(pid_tgid)
        }
        // Pending, or a Go program that could not be probed.
        Some(_) => untrusted_if_serving(pid_tgid),
    };
    let Some((key, seq, flags)) = tag else {
        // Nothing to carry. The proxy tells the previous request's tag,
        // still in the map, by its write time: it serves one request only.
        return;
    };
    mark_pod_tagged();
    let tag = RequestTag {
        pid_tgid: key,
        seq,
        written_ns: now,
        flags,
        _pad: 0,
    };
    // SAFETY: `sk` is the tracepoint's socket argument, typed by BTF.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    if TAGGER_REQUEST_TAGS.insert(cookie, tag, 0).is_ok() {
        bump(stat::OUTBOUND_TAGGED);
    }
}

/// A pod opens an HTTP/2 connection on redirected socket `fd`: its streams
/// are tagged one by one where the app is probed (grpc.rs, keyed by this
/// socket's cookie, found by the fd), and the connection as a whole gets
/// the tag of a call whose cause cannot be told (`on_h2_send`).
#[inline(always)]
fn on_h2_preface(sk: *mut c_void, pid_tgid: u64, fd: u32) {
    set_sock_role(sk, ROLE_REDIRECTED_H2);
    // Whatever the process's kind now: a Go process still being classified
    // (its first call dials) is probed moments later, and the connection
    // lives on.
    // SAFETY: `sk` is the tracepoint's socket argument, typed by BTF.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let key = tagger_common::golang::conn_key((pid_tgid >> 32) as u32, fd);
    let _ = TAGGER_H2_SOCKETS.insert(key, cookie, 0);
    on_h2_send(sk, pid_tgid);
}

/// A send on a pod's redirected HTTP/2 connection. Frames of many streams
/// share a write, so the write says nothing of a stream's cause; if the
/// process serves requests, the connection's tag says a stream no probe
/// tagged may have been caused by one (untrusted). Set once: serving is for
/// life.
#[inline(always)]
fn on_h2_send(sk: *mut c_void, pid_tgid: u64) {
    if untrusted_if_serving(pid_tgid).is_none() {
        return;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    // SAFETY: plain value read.
    if unsafe { TAGGER_REQUEST_TAGS.get(cookie) }.is_some_and(|t| t.flags & TAG_UNTRUSTED != 0) {
        return;
    }
    mark_pod_tagged();
    let tag = RequestTag {
        pid_tgid,
        seq: 0,
        // SAFETY: a helper without arguments.
        written_ns: unsafe { bpf_ktime_get_ns() },
        flags: TAG_UNTRUSTED,
        _pad: 0,
    };
    let _ = TAGGER_REQUEST_TAGS.insert(cookie, tag, 0);
}

/// The tag of a thread-per-request process: the thread's open inbound
/// request, untrusted when it has several open (an event loop).
#[inline(always)]
fn thread_tag(state: &ThreadState, pid_tgid: u64, now: u64) -> Option<(u64, u64, u32)> {
    let (seq, flags) = if state.open > 0 {
        let flags = if state.concurrent != 0 {
            TAG_CONCURRENT
        } else {
            0
        };
        (state.seq, flags)
    } else if just_woke(pid_tgid, now) {
        // No inbound request seen: unseen in leaf mode, just ended.
        (0, TAG_UNSEEN)
    } else if is_multiplexed(pid_tgid) {
        // It serves HTTP/2 streams no thread reads on its own.
        (0, TAG_UNTRUSTED)
    } else {
        (0, 0)
    };
    (seq != 0 || flags != 0).then_some((pid_tgid, seq, flags))
}

/// Sets the current pod's flag before its first tag is written: the proxy,
/// which reads the request after this program ran, then knows to look.
#[inline(always)]
pub(crate) fn mark_pod_tagged() {
    // SAFETY: a helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: plain value copied out.
    let Some(slot) = (unsafe { TAGGER_POD_CGROUPS.get(cgroup) }).copied() else {
        return;
    };
    if let Some(flag) = TAGGER_POD_TAGGED.get_ptr_mut(slot) {
        // SAFETY: array value, valid while this program runs.
        unsafe {
            if core::ptr::read_volatile(flag) == 0 {
                core::ptr::write_volatile(flag, 1);
            }
        }
    }
}

/// A socket send returned. On a redirected socket, the thread is done with
/// the send it may have tagged; on an accepted one, an HTTP response ends
/// the inbound request it answers (the thread's, or a Go connection's).
fn on_send_done(sk: *mut c_void, sent: i64) {
    let role = sock_role(sk);
    if role != ROLE_REDIRECTED && role != ROLE_PASSIVE {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let state = TAGGER_THREADS.get_ptr_mut(pid_tgid);
    if role == ROLE_REDIRECTED {
        if let Some(state) = state {
            // SAFETY: the map value lives while this program runs.
            unsafe { (*state).sending = 0 };
        }
        return;
    }
    if sent <= 0 {
        return;
    }
    let go = procs::kind_of(pid_tgid) == Some(kind::GO);
    // SAFETY: as above.
    if !go && state.is_none_or(|state| unsafe { (*state).open } == 0) {
        return;
    }
    let Some(buffer) = syscall_buffer(Direction::Send) else {
        return;
    };
    if buffer.len < 16 || !head(buffer.addr).is_some_and(is_response_start) {
        return;
    }
    // "HTTP/1.1 1xx": an interim response (100 Continue), not the answer.
    if head(buffer.addr + 8).is_some_and(|rest| (rest >> 8) as u8 == b'1') {
        return;
    }
    if go {
        golang::on_response(pid_tgid, buffer.fd);
        return;
    }
    if let Some(state) = state {
        // SAFETY: as above.
        let state = unsafe { &mut *state };
        state.open -= 1;
        if state.open == 0 {
            state.concurrent = 0;
        }
    }
}

/// A socket receive returned `received` bytes. Inbound requests are read
/// on sockets a pod accepted; every other receive ends after one lookup.
fn on_receive(sk: *mut c_void, received: i64, flags: u64) {
    if received <= 0 || flags & MSG_PEEK != 0 || sock_role(sk) != ROLE_PASSIVE {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_leaf(pid_tgid) {
        return;
    }
    let Some(buffer) = syscall_buffer(Direction::Receive) else {
        return;
    };
    let len = if buffer.len < received as u64 {
        buffer.len
    } else {
        received as u64
    };
    match procs::kind_of(pid_tgid) {
        // Go reads shorter than 8 bytes count too (see golang::on_read).
        Some(kind::GO) => {
            if let Some(first) = head(buffer.addr) {
                golang::on_read(pid_tgid, buffer.fd, buffer.addr, len, first);
            }
        }
        // Too short to start a request, but it may end a header block.
        _ if len < 8 => on_short_read(pid_tgid, buffer.fd, buffer.addr, len),
        kind => {
            if kind.is_none() {
                procs::ask_classify(pid_tgid);
            }
            on_read(pid_tgid, buffer.fd, buffer.addr, len);
        }
    }
}

/// An `int` argument of a BTF tracepoint (each argument is a u64 slot).
#[inline(always)]
fn int_arg(ctx: &BtfTracePointContext, n: usize) -> i64 {
    i64::from(ctx.arg::<u64>(n) as i32)
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn tagger_sock_recv(ctx: BtfTracePointContext) -> i32 {
    if !crate::active() {
        return 0;
    }
    on_receive(
        ctx.arg::<*mut c_void>(0),
        int_arg(&ctx, 1),
        ctx.arg::<u64>(2),
    );
    0
}

/// `tcp_sendmsg_locked(const struct sock *sk, const struct msghdr *msg,
/// const struct sk_buff *skb, int size_goal)`.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tagger_tcp_send(ctx: BtfTracePointContext) -> i32 {
    if !crate::active() {
        return 0;
    }
    on_tcp_send(ctx.arg::<*mut c_void>(0));
    0
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn tagger_sock_sent(ctx: BtfTracePointContext) -> i32 {
    if !crate::active() {
        return 0;
    }
    on_send_done(ctx.arg::<*mut c_void>(0), int_arg(&ctx, 1));
    0
}

/// A thread exits: its state goes; when it is the process's main thread,
/// the process's too (so a new process that reuses the pid starts afresh).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn tagger_task_exit(_ctx: BtfTracePointContext) -> i32 {
    if !crate::active() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: lookups of plain values.
    if unsafe { TAGGER_THREADS.get(pid_tgid) }.is_some() {
        let _ = TAGGER_THREADS.remove(pid_tgid);
    }
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 == tgid {
        // SAFETY: a lookup whose value is only tested for presence.
        if unsafe { TAGGER_PROCESSES.get(tgid) }.is_some() {
            let _ = TAGGER_PROCESSES.remove(tgid);
        }
        procs::on_process_exit(tgid);
    }
    0
}

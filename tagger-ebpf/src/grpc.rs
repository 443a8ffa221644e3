//! grpc-go: the lane follows each HTTP/2 stream (SPEC D "Go gRPC", F).
//!
//! HTTP/2 multiplexes: one connection carries many requests at once, its
//! reads and writes hold frames of several streams, and HPACK leaves no
//! header readable on the wire. So for a probed Go process whose binary has
//! grpc-go (`GoOffsets::grpc` = 1) the context is taken where grpc-go has
//! the headers decoded and the stream id known, on the goroutines golang.rs
//! already follows:
//!
//! 1. **Inbound stream** (entry of `(*http2Server).operateHeaders`, on the
//!    connection's reader goroutine): the stream opens a context keyed by
//!    `stream_key(tgid, fd, stream id)` with a fresh `seq`; its header
//!    fields go to userspace as `name: value` lines (`EVENT_FIELDS`). The
//!    reader goroutine holds the context for the next goroutine it starts:
//!    grpc-go starts the stream's handler goroutine before `operateHeaders`
//!    returns, and newproc1 (golang.rs) *moves* the context to it, so the
//!    reader keeps nothing (a RET probe would do the same at the cost of
//!    six uprobes per process, each slow to remove). A reader that started
//!    no handler (a refused stream) holds it until its next stream; it
//!    starts no other goroutine, and a context is only taken while live.
//! 2. **Stream over** (entry of `(*http2Server).WriteStatus`): the status
//!    ends the stream, and its context: goroutines that outlive it inherit
//!    nothing trusted.
//! 3. **Outbound call** (RETs of `(*http2Client).createHeaderFields`, on the
//!    calling goroutine, before the stream is queued for the writer): the
//!    caller's context is bound to the header field slice just built.
//! 4. **Headers written** (entry of `(*loopyWriter).writeHeader`, on the
//!    connection's writer goroutine, before the frame is encoded): the
//!    binding of that slice becomes the tag of (socket cookie, stream id),
//!    which the proxy takes for exactly that stream. It is in the map
//!    before the frame can reach the proxy.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use tagger_common::{
    CAPTURE_BYTES, EVENT_FIELDS, EVENT_FIRST, RequestTag, StreamKey,
    golang::{GoOffsets, conn_key, h2, stream_key},
    stat,
};

use crate::{
    bump,
    golang::{self, CALL_TTL_NS, GoCall, GoContext, GoroutineKey, read_u64, regs},
    propagation::{self, TAGGER_H2_SOCKETS, TAGGER_STREAM_TAGS},
};

/// A header field slice built for an outbound stream, by process.
#[repr(C)]
#[derive(Clone, Copy)]
struct FieldsKey {
    tgid: u32,
    _pad: u32,
    /// The slice's array (fresh per call: `createHeaderFields` makes it).
    array: u64,
}

/// Step 1's contexts, by reader goroutine, for the next goroutine it starts.
#[map]
static TAGGER_GRPC_READERS: LruHashMap<GoroutineKey, GoContext> =
    LruHashMap::with_max_entries(4096, 0);

/// The context a reader goroutine holds for the goroutine it starts, taken
/// (newproc1, golang.rs).
#[inline(always)]
pub(crate) fn take_handoff(parent: GoroutineKey) -> Option<GoContext> {
    // SAFETY: plain value copied out at once.
    let context = unsafe { TAGGER_GRPC_READERS.get(parent) }.copied()?;
    let _ = TAGGER_GRPC_READERS.remove(parent);
    Some(context)
}

/// Step 3's bindings, taken by step 4. One that is never taken (the call
/// failed before its headers were written) ages out, and its address, if
/// reused for another call's fields, is bound anew first.
#[map]
static TAGGER_GRPC_CALLS: LruHashMap<FieldsKey, GoCall> = LruHashMap::with_max_entries(16_384, 0);

/// Header fields sent per inbound stream at most (a gRPC call has half a
/// dozen besides the pseudo-headers).
const MAX_FIELDS: u64 = 24;
/// A field with a longer name or value is not sent (the lane, ids and
/// pass-through values are short).
const MAX_NAME: u64 = 64;
const MAX_VALUE: u64 = 1024;

#[inline(always)]
fn read_u32(addr: u64) -> Option<u32> {
    if addr == 0 {
        return None;
    }
    // SAFETY: the helper checks the user address and fails cleanly.
    unsafe { bpf_probe_read_user(addr as *const u32) }.ok()
}

/// The socket fd behind a `net.Conn` interface field at `iface`.
#[inline(always)]
fn conn_fd(iface: u64, off: &GoOffsets) -> Option<u32> {
    golang::tcp_fd(read_u64(iface + 8)?, off)
}

/// Offsets of a process whose grpc-go is probed.
#[inline(always)]
fn grpc_offsets(tgid: u32) -> Option<GoOffsets> {
    golang::offsets(tgid).filter(|off| off.grpc != 0)
}

/// Step 1. `operateHeaders(t *http2Server, frame *MetaHeadersFrame, ...)`:
/// RAX = t, RBX = frame; R14 = the reader goroutine.
#[uprobe]
pub fn tagger_grpc_operate_headers(ctx: ProbeContext) -> u32 {
    let _ = try_operate_headers(&ctx);
    0
}

fn try_operate_headers(ctx: &ProbeContext) -> Option<()> {
    if !crate::active() {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let off = grpc_offsets(tgid)?;
    let r = regs(ctx);
    bump(stat::INBOUND_REQUESTS);
    propagation::count_inbound(pid_tgid);
    if propagation::is_leaf(pid_tgid) {
        return None;
    }
    let (t, frame) = (r.rax, r.rbx);
    let headers = read_u64(frame)?;
    let stream_id = read_u32(headers + h2::FRAME_HEADER_STREAM_ID)?;
    let fd = conn_fd(t + off.grpc_server_conn, &off)?;
    let key = stream_key(tgid, fd, stream_id);
    // SAFETY: a helper without arguments.
    let seq = unsafe { bpf_ktime_get_ns() };
    propagation::emit_bytes(key, seq, fd, 0, 0, EVENT_FIRST | EVENT_FIELDS);
    let fields = read_u64(frame + h2::META_HEADERS_FIELDS)?;
    let count = read_u64(frame + h2::META_HEADERS_FIELDS + 8)?;
    for i in 0..MAX_FIELDS {
        if i >= count {
            break;
        }
        emit_field(key, seq, fd, fields + i * h2::HEADER_FIELD_SIZE);
    }
    // The empty line that ends a header block.
    propagation::emit_bytes(
        key,
        seq,
        fd,
        u64::from_le_bytes(*b"\r\n\0\0\0\0\0\0"),
        2,
        EVENT_FIELDS,
    );
    golang::open_context(key, seq, 0);
    let reader = GoroutineKey {
        tgid,
        _pad: 0,
        goid: golang::goid(r.r14, &off)?,
    };
    let _ = TAGGER_GRPC_READERS.insert(reader, GoContext { seq, key }, 0);
    Some(())
}

/// Sends the header field at `field` as one `name: value\r\n` line; pseudo
/// headers and overlong fields are skipped.
#[inline(always)]
fn emit_field(key: u64, seq: u64, fd: u32, field: u64) -> Option<()> {
    let name = read_u64(field)?;
    let name_len = read_u64(field + 8)?;
    let value = read_u64(field + h2::HEADER_FIELD_VALUE)?;
    let value_len = read_u64(field + h2::HEADER_FIELD_VALUE + 8)?;
    if name_len == 0 || name_len > MAX_NAME || value_len > MAX_VALUE {
        return None;
    }
    propagation::emit_line(key, seq, fd, name, name_len, value, value_len)
}

/// Step 2. `(*http2Server).WriteStatus(t, s *Stream, st)`: RAX = t, RBX = s.
#[uprobe]
pub fn tagger_grpc_write_status(ctx: ProbeContext) -> u32 {
    let _ = try_write_status(&ctx);
    0
}

fn try_write_status(ctx: &ProbeContext) -> Option<()> {
    if !crate::active() {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let off = grpc_offsets(tgid)?;
    let r = regs(ctx);
    let stream_id = read_u32(r.rbx + off.grpc_stream_id)?;
    let fd = conn_fd(r.rax + off.grpc_server_conn, &off)?;
    golang::end_context(stream_key(tgid, fd, stream_id));
    Some(())
}

/// Step 3. At each RET of `createHeaderFields(ctx, callHdr)
/// ([]hpack.HeaderField, error)`: RAX = the slice's array, RDI = the
/// error's type word (0: no error); R14 = the calling goroutine.
#[uprobe]
pub fn tagger_grpc_header_fields_ret(ctx: ProbeContext) -> u32 {
    let _ = try_header_fields_ret(&ctx);
    0
}

fn try_header_fields_ret(ctx: &ProbeContext) -> Option<()> {
    if !crate::active() {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let off = grpc_offsets(tgid)?;
    let r = regs(ctx);
    if r.rax == 0 || r.rdi != 0 {
        return None;
    }
    let call = golang::call_of(pid_tgid, golang::goid(r.r14, &off)?);
    let key = FieldsKey {
        tgid,
        _pad: 0,
        array: r.rax,
    };
    let _ = TAGGER_GRPC_CALLS.insert(key, call, 0);
    Some(())
}

/// Step 4. `(*loopyWriter).writeHeader(l, streamID uint32, endStream bool,
/// hf []hpack.HeaderField, onWrite func())`: RAX = l, RBX = streamID,
/// RDI = hf's array.
#[uprobe]
pub fn tagger_grpc_write_header(ctx: ProbeContext) -> u32 {
    let _ = try_write_header(&ctx);
    0
}

fn try_write_header(ctx: &ProbeContext) -> Option<()> {
    if !crate::active() {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let off = grpc_offsets(tgid)?;
    let r = regs(ctx);
    let key = FieldsKey {
        tgid,
        _pad: 0,
        array: r.rdi,
    };
    // SAFETY: plain value copied out at once. A server's response headers
    // were never bound: they end here.
    let call = unsafe { TAGGER_GRPC_CALLS.get(key) }.copied()?;
    let _ = TAGGER_GRPC_CALLS.remove(key);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(call.bound_ns) > CALL_TTL_NS {
        return None;
    }
    let framer = read_u64(r.rax + off.grpc_loopy_framer)?;
    let writer = read_u64(framer + off.grpc_framer_writer)?;
    let fd = conn_fd(writer + off.grpc_writer_conn, &off)?;
    // SAFETY: plain value copied out at once. None: not a redirected
    // connection (a call to an unmanaged destination).
    let cookie = unsafe { TAGGER_H2_SOCKETS.get(conn_key(tgid, fd)) }.copied()?;
    let (context, seq, flags) = call.tag(pid_tgid)?;
    propagation::mark_pod_tagged();
    let tag = RequestTag {
        pid_tgid: context,
        seq,
        written_ns: now,
        flags,
        _pad: 0,
    };
    let stream = StreamKey {
        cookie,
        stream_id: r.rbx as u32,
        _pad: 0,
    };
    if TAGGER_STREAM_TAGS.insert(stream, tag, 0).is_ok() {
        bump(stat::OUTBOUND_TAGGED);
    }
    Some(())
}

const _: () = assert!(MAX_NAME + MAX_VALUE + 4 <= CAPTURE_BYTES as u64);

//! tagger's kernel programs.
//!
//! * `tagger_connect4` (cgroup/connect4 on the pods' cgroups; `connect6`
//!   for v4-mapped addresses): a TCP
//!   `connect()` to a managed destination is rewritten to the node proxy, and
//!   the original destination plus the caller's cgroup are recorded under the
//!   socket cookie.
//! * `tagger_sock_ops` (sock_ops on the same cgroups): when the kernel sends
//!   the SYN of such a socket, its source address is known; the record moves
//!   from "by cookie" to "by source address", which is what the proxy sees
//!   as the peer of the accepted connection.
//!
//!   sock_ops also gives sockets their propagation role (accepted by a pod,
//!   or redirected) and watches redirected sockets close, to drop their
//!   request tags.
//!
//! The programs that carry lanes through unmodified apps are in
//! `propagation.rs` (threads), `golang.rs` (goroutines), `grpc.rs`
//! (grpc-go's HTTP/2 streams) and `procs.rs` (which way a process gets).
//!
//! Each program is a thin entry that calls a `try_` function and always lets
//! the connection proceed: a failure here must never break an app's connect.
#![no_std]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![no_main]

mod golang;
mod grpc;
mod procs;
mod propagation;

#[cfg(not(target_arch = "bpf"))]
use core::sync::atomic::{AtomicI64, Ordering};

use aya_ebpf::{
    Global,
    bindings::{
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock_addr,
    },
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockOpsContext},
};
use tagger_common::{
    DestInfo, DestKey, FlowKey, FlowOrigin, MAX_FLOWS, MAX_MANAGED, ProxyConfig, stat,
};

/// Verdict of a cgroup_sock_addr program that lets the syscall go on.
const ALLOW: i32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
/// `TCP_CLOSE` in the kernel's TCP state numbering.
const TCP_CLOSE: u32 = 7;

#[map]
static TAGGER_CONFIG: Array<ProxyConfig> = Array::with_max_entries(1, 0);

#[map]
static TAGGER_MANAGED: HashMap<DestKey, DestInfo> = HashMap::with_max_entries(MAX_MANAGED, 0);

/// Redirected sockets between connect() and the SYN, by socket cookie.
#[map]
static TAGGER_PENDING: LruHashMap<u64, FlowOrigin> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Redirected connections by their source address, for the proxy.
#[map]
static TAGGER_FLOWS: LruHashMap<FlowKey, FlowOrigin> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Redirected connections open: +1 when a flow is linked, -1 when its
/// client socket closes (both here, so nothing in userspace can skew it).
#[map]
static TAGGER_FLOW_COUNT: Array<i64> = Array::with_max_entries(1, 0);

#[map]
static TAGGER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// This load's generation, set by the loader (`names::GLOBAL_GENERATION`).
#[unsafe(no_mangle)]
static TAGGER_GENERATION: Global<u32> = Global::new(0);

/// Whether this load's programs are the ones that act (see
/// `ProxyConfig::generation`): during a handover the old and the new
/// daemon's programs are both attached, and exactly one set works.
#[inline(always)]
pub(crate) fn active() -> bool {
    let mine = TAGGER_GENERATION.load();
    TAGGER_CONFIG.get(0).is_some_and(|c| c.generation == mine)
}

/// Adds `delta` to the open flows.
#[inline(always)]
fn count_flows(delta: i64) {
    if let Some(count) = TAGGER_FLOW_COUNT.get_ptr_mut(0) {
        // SAFETY: an aligned i64 in a map value, alive while the program
        // runs; every writer (this program on every CPU) goes through
        // atomics.
        unsafe { atomic_add(count, delta) };
    }
}

/// An atomic add (BPF_ATOMIC). The bpf target does not declare the atomics
/// `core` builds `fetch_add` on, but the instruction exists: the intrinsic
/// emits it. (The host build, for clippy, takes the stable path.)
///
/// # Safety
/// `target` is valid and aligned for the call.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn atomic_add(target: *mut i64, delta: i64) {
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xadd::<i64, i64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            target, delta,
        )
    };
}

/// See the bpf version.
///
/// # Safety
/// `target` is valid and aligned for the call.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn atomic_add(target: *mut i64, delta: i64) {
    // SAFETY: as the caller promises.
    unsafe { AtomicI64::from_ptr(target) }.fetch_add(delta, Ordering::Relaxed);
}

/// Redirected connections open now (never below 0: a skew from a flow
/// that closed uncounted must not read as "full").
#[inline(always)]
fn open_flows() -> u64 {
    TAGGER_FLOW_COUNT.get_ptr_mut(0).map_or(0, |count| {
        // SAFETY: as in `count_flows`; an aligned 8-byte read is whole.
        let open = unsafe { core::ptr::read_volatile(count) };
        open.max(0) as u64
    })
}

#[inline(always)]
pub(crate) fn bump(index: u32) {
    if let Some(counter) = TAGGER_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

#[cgroup_sock_addr(connect4)]
pub fn tagger_connect4(ctx: SockAddrContext) -> i32 {
    let _ = try_connect4(&ctx);
    ALLOW
}

/// IPv6 sockets reach IPv4 services through v4-mapped addresses
/// (`::ffff:a.b.c.d`), as the JVM does by default: same redirect.
#[cgroup_sock_addr(connect6)]
pub fn tagger_connect6(ctx: SockAddrContext) -> i32 {
    let _ = try_connect6(&ctx);
    ALLOW
}

/// `::ffff:0:0/96` as the kernel stores it: the third 32-bit word in
/// network byte order.
const V4_MAPPED_PREFIX: u32 = 0x0000_ffffu32.to_be();

fn try_connect6(ctx: &SockAddrContext) -> Result<(), i64> {
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: valid context, as in connect4.
    let (sock_type, w0, w1, w2, ip, port) = unsafe {
        (
            (*addr).type_,
            (*addr).user_ip6[0],
            (*addr).user_ip6[1],
            (*addr).user_ip6[2],
            (*addr).user_ip6[3],
            (*addr).user_port,
        )
    };
    if sock_type != SOCK_STREAM || w0 != 0 || w1 != 0 || w2 != V4_MAPPED_PREFIX {
        return Ok(());
    }
    let Some(proxy) = redirect_target(ctx, ip, port)? else {
        return Ok(());
    };
    // SAFETY: as in connect4; only the v4 part of the mapped address changes.
    unsafe {
        core::ptr::write_volatile(&mut (*addr).user_ip6[3], proxy.proxy_ip);
        core::ptr::write_volatile(&mut (*addr).user_port, u32::from(proxy.proxy_port));
    }
    Ok(())
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), i64> {
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid context for the program's lifetime.
    let (family, sock_type, ip, port) = unsafe {
        (
            (*addr).user_family,
            (*addr).type_,
            (*addr).user_ip4,
            (*addr).user_port,
        )
    };
    if family != AF_INET || sock_type != SOCK_STREAM {
        return Ok(());
    }
    let Some(proxy) = redirect_target(ctx, ip, port)? else {
        return Ok(());
    };
    // SAFETY: writing the destination is what connect4 programs are for. The
    // writes are volatile so LLVM cannot merge them into one wide store the
    // verifier rejects.
    unsafe {
        core::ptr::write_volatile(&mut (*addr).user_ip4, proxy.proxy_ip);
        core::ptr::write_volatile(&mut (*addr).user_port, u32::from(proxy.proxy_port));
    }
    Ok(())
}

/// Decides whether a TCP connect to `ip:port` (network order) goes to the
/// proxy, and if so records the flow; returns where to send it.
fn redirect_target(ctx: &SockAddrContext, ip: u32, port: u32) -> Result<Option<ProxyConfig>, i64> {
    let config = TAGGER_CONFIG.get(0).ok_or(-1i64)?;
    if config.generation != TAGGER_GENERATION.load() {
        return Ok(None); // another daemon's programs act
    }
    bump(stat::CONNECT_SEEN);
    if config.proxy_port == 0 {
        return Ok(None); // no live proxy: fail open
    }
    // SAFETY: a helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if cgroup_id == config.daemon_cgroup_id {
        return Ok(None);
    }
    // Only pods' processes. On a Kubernetes node the programs hang at the
    // cgroup root, where kubelet (probing pod addresses), the node's agents
    // and hostNetwork pods run too: they reach every address as it is. The
    // daemon puts only managed pods' cgroups in this map.
    if !propagation::in_pod(cgroup_id) {
        return Ok(None);
    }
    let dest = DestKey {
        ip,
        port: port as u16,
        _pad: 0,
    };
    // SAFETY: read-only lookup of a plain-old-data value.
    if unsafe { TAGGER_MANAGED.get(dest) }.is_none() {
        return Ok(None);
    }
    if open_flows() >= u64::from(config.flow_limit) {
        // Full: this connection goes direct (no lane) rather than risk the
        // flow map evicting one the proxy has yet to claim.
        bump(stat::FLOWS_FULL);
        return Ok(None);
    }
    // SAFETY: the context's socket, valid while this program runs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let origin = FlowOrigin {
        orig_ip: ip,
        orig_port: port as u16,
        _pad: 0,
        cgroup_id,
        cookie,
    };
    if TAGGER_PENDING.insert(cookie, origin, 0).is_err() {
        // Without a record the proxy could not tell where to go: do not redirect.
        bump(stat::MAP_ERRORS);
        return Ok(None);
    }
    bump(stat::CONNECT_REDIRECTED);
    propagation::note_call_out(bpf_get_current_pid_tgid());
    Ok(Some(*config))
}

#[sock_ops]
pub fn tagger_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_sock_ops(&ctx);
    0
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i64> {
    if !active() {
        return Ok(());
    }
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => link_flow(ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // A pod accepted a connection: its inbound requests come here.
            set_role(ctx, propagation::ROLE_PASSIVE);
            Ok(())
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            forget_socket(ctx);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A redirected socket closed: its request tag goes (cookies are never
/// reused, so this only frees space).
fn forget_socket(ctx: &SockOpsContext) {
    // SAFETY: the context's socket, valid while this program runs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let _ = propagation::TAGGER_REQUEST_TAGS.remove(cookie);
    if TAGGER_FLOWS.remove(flow_key(ctx)).is_ok() {
        count_flows(-1);
    }
}

/// The flow map's key of the context's (client) socket.
fn flow_key(ctx: &SockOpsContext) -> FlowKey {
    FlowKey {
        src_ip: ctx.local_ip4(),
        // local_port is in host byte order, unlike every other port here.
        src_port: (ctx.local_port() as u16).to_be(),
        _pad: 0,
    }
}

/// Gives the context's socket a propagation role (see propagation.rs).
fn set_role(ctx: &SockOpsContext, role: u32) {
    // SAFETY: reading the context's socket pointer, which the verifier
    // types as a socket or null.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if !sk.is_null() {
        propagation::set_sock_role(sk.cast(), role);
    }
}

/// The kernel is sending the SYN of a socket: if connect4 redirected it,
/// its record moves to its source address, where the proxy looks.
fn link_flow(ctx: &SockOpsContext) -> Result<(), i64> {
    // AF_INET6 too: a v4-mapped connect (see connect6) keeps its IPv4
    // address in local_ip4.
    if ctx.family() != AF_INET && ctx.family() != AF_INET6 {
        return Ok(());
    }
    // SAFETY: the context's socket, valid while this program runs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: read of a plain-old-data value we copy out at once.
    let origin = match unsafe { TAGGER_PENDING.get(cookie) } {
        Some(origin) => *origin,
        None => return Ok(()),
    };
    let key = flow_key(ctx);
    // SAFETY: a presence test only.
    let replaced = unsafe { TAGGER_FLOWS.get(key) }.is_some();
    if TAGGER_FLOWS.insert(key, origin, 0).is_err() {
        bump(stat::MAP_ERRORS);
    } else {
        bump(stat::FLOW_LINKED);
        if !replaced {
            count_flows(1);
        }
    }
    let _ = TAGGER_PENDING.remove(cookie);
    set_role(ctx, propagation::ROLE_REDIRECTED);
    // Ask for state callbacks on this socket only, to see it close.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

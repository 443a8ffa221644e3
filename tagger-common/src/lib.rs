//! Types and names shared by the kernel programs (`tagger-ebpf`) and the
//! daemon (`tagger-user`).
//!
//! Every type that crosses the user/kernel boundary is `#[repr(C)]` with its
//! padding spelled out, so both sides agree on the layout byte for byte and no
//! uninitialised padding ever reaches a map key (a padded key would make two
//! equal flows hash differently).
#![no_std]

pub mod golang;

/// Program and map names: the daemon looks them up by these strings, the
/// kernel crate names its items after them.
pub mod names {
    pub const PROG_CONNECT4: &str = "tagger_connect4";
    pub const PROG_CONNECT6: &str = "tagger_connect6";
    pub const PROG_SOCK_OPS: &str = "tagger_sock_ops";
    /// The load-time constant (`.rodata`) holding a load's generation.
    pub const GLOBAL_GENERATION: &str = "TAGGER_GENERATION";
    pub const MAP_CONFIG: &str = "TAGGER_CONFIG";
    pub const MAP_MANAGED: &str = "TAGGER_MANAGED";
    pub const MAP_PENDING: &str = "TAGGER_PENDING";
    pub const MAP_FLOWS: &str = "TAGGER_FLOWS";
    pub const MAP_STATS: &str = "TAGGER_STATS";
    /// Redirected connections open (one `i64`, kernel-maintained).
    pub const MAP_FLOW_COUNT: &str = "TAGGER_FLOW_COUNT";

    // Propagation through unmodified apps (socket-level BTF tracepoints).
    pub const MAP_POD_CGROUPS: &str = "TAGGER_POD_CGROUPS";
    pub const MAP_REQUEST_TAGS: &str = "TAGGER_REQUEST_TAGS";
    pub const MAP_EVENTS: &str = "TAGGER_EVENTS";
    pub const MAP_POD_TAGGED: &str = "TAGGER_POD_TAGGED";

    // Processes: which way each one's requests are correlated.
    pub const MAP_PROC_KINDS: &str = "TAGGER_PROC_KINDS";
    pub const MAP_PROC_EVENTS: &str = "TAGGER_PROC_EVENTS";

    // Go programs (uprobes at file offsets from `golang::inspect`).
    pub const MAP_GO_PROCS: &str = "TAGGER_GO_PROCS";
    pub const PROG_GO_ROUND_TRIP: &str = "tagger_go_round_trip";
    pub const PROG_GO_NEWPROC_RET: &str = "tagger_go_newproc_ret";
    // grpc-go (google.golang.org/grpc/internal/transport), when the binary
    // has it and its offsets are known.
    pub const PROG_GRPC_HEADER_FIELDS_RET: &str = "tagger_grpc_header_fields_ret";
    pub const PROG_GRPC_WRITE_HEADER: &str = "tagger_grpc_write_header";
    pub const PROG_GRPC_OPERATE_HEADERS: &str = "tagger_grpc_operate_headers";
    pub const PROG_GRPC_WRITE_STATUS: &str = "tagger_grpc_write_status";
    /// Tags of single HTTP/2 streams, by (client socket cookie, stream id).
    pub const MAP_STREAM_TAGS: &str = "TAGGER_STREAM_TAGS";
    /// (program, tracepoint): every BTF tracepoint (`tp_btf`) the daemon
    /// attaches. None is a syscall tracepoint: those would slow every
    /// syscall of every task on the node.
    pub const BTF_TRACEPOINTS: [(&str, &str); 5] = [
        ("tagger_sock_recv", "sock_recv_length"),
        ("tagger_tcp_send", "tcp_sendmsg_locked"),
        ("tagger_sock_sent", "sock_send_length"),
        ("tagger_task_exit", "sched_process_exit"),
        ("tagger_task_exec", "sched_process_exec"),
    ];
}

/// Bumped when a shared map's meaning changes in a way its sizes do not show
/// (a field reordered, a flag's sense): part of the pinned maps' layout key,
/// so that daemons of different layouts never share maps.
pub const MAP_LAYOUT_VERSION: u32 = 3;

/// The default and largest `ProxyConfig::flow_limit`: an eighth of the flow
/// map kept free for connects racing past the check.
pub const MAX_FLOW_LIMIT: u32 = MAX_FLOWS / 8 * 7;

/// Capacity of the flow maps. They are LRU maps: a flow the proxy never
/// claims (the client died between connect() and the SYN) ages out.
pub const MAX_FLOWS: u32 = 65_536;
/// Pods a node tracks at most: slots of `TAGGER_POD_TAGGED` (slot 0 unused).
pub const MAX_POD_SLOTS: u32 = 8192;
/// `BPF_F_MMAPABLE`: an array map userspace can read as memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Capacity of the managed-destination map (service addresses + endpoints).
pub const MAX_MANAGED: u32 = 16_384;

/// Where redirected connections go. One entry, index 0 of `TAGGER_CONFIG`.
///
/// `proxy_port == 0` means "no proxy": the connect hook then leaves every
/// connection alone. This is the first half of fail-open; the second is that
/// the programs are attached through links the daemon owns, so they detach
/// when the daemon dies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// IPv4 address of the node proxy, network byte order.
    pub proxy_ip: u32,
    /// Port of the node proxy, network byte order (as `bpf_sock_addr.user_port`).
    pub proxy_port: u16,
    pub _pad: u16,
    /// cgroup id of the daemon itself: its own connections are never redirected,
    /// even where it runs inside a managed cgroup (as a DaemonSet pod does).
    pub daemon_cgroup_id: u64,
    /// The generation whose programs act. Each daemon loads its programs
    /// with its own generation (`TAGGER_GENERATION`, a load-time constant);
    /// through a handover both sets are attached to the same pinned maps
    /// and this one word says which set runs, so the switch is atomic and
    /// no hook ever runs twice or not at all.
    pub generation: u32,
    /// Redirected connections open at once at most (`TAGGER_FLOW_COUNT`):
    /// past it a connect goes direct, so the LRU flow map never has to
    /// evict a live flow (which would leave the proxy a connection it
    /// cannot place). 0: no redirection at all.
    pub flow_limit: u32,
}

/// A managed destination: a service address or one endpoint of a managed
/// HTTP service. Both fields in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestKey {
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

/// What the daemon knows about a managed destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestInfo {
    /// Index of the service in the daemon's state (informational for the kernel).
    pub service_id: u32,
    /// `DEST_KIND_*`.
    pub kind: u32,
}

pub const DEST_KIND_SERVICE_ADDR: u32 = 1;
pub const DEST_KIND_ENDPOINT: u32 = 2;

/// Recorded by the connect hook for a redirected socket: who connected and
/// where it meant to go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowOrigin {
    /// Original destination IPv4, network byte order.
    pub orig_ip: u32,
    /// Original destination port, network byte order.
    pub orig_port: u16,
    pub _pad: u16,
    /// cgroup v2 id of the calling task: names the source pod.
    pub cgroup_id: u64,
    /// Socket cookie, the id the kernel gives this socket for its lifetime.
    pub cookie: u64,
}

/// The client side of a redirected TCP connection as the proxy sees it after
/// `accept()`: the peer address. Filled by sock_ops once the kernel has
/// chosen the source port. Both fields network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip: u32,
    pub src_port: u16,
    pub _pad: u16,
}

/// Bytes of one inbound read copied to userspace per event. Header blocks
/// larger than this arrive as several events (see `MAX_CAPTURE_PER_REQUEST`).
pub const CAPTURE_BYTES: usize = 4096;
/// Bytes of one inbound request captured at most (headers beyond are not
/// seen; bodies are never needed).
pub const MAX_CAPTURE_PER_REQUEST: u32 = 16 * 1024;
/// Capacity of the inbound-event ring buffer (bytes, a power of two).
pub const EVENTS_RING_BYTES: u32 = 1024 * 1024;

/// The first bytes of one read by a pod's thread that starts (or continues)
/// an HTTP request: userspace parses the lane and pass-through headers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InboundEvent {
    /// `bpf_get_current_pid_tgid()`: tgid << 32 | tid.
    pub pid_tgid: u64,
    /// Identifies the inbound request on this thread (a kernel timestamp).
    pub seq: u64,
    pub fd: u32,
    /// Valid bytes in `data`.
    pub len: u32,
    /// `EVENT_*` flags.
    pub flags: u32,
    pub _pad: u32,
    pub data: [u8; CAPTURE_BYTES],
}

/// The event starts a request (else it continues the thread's current one).
pub const EVENT_FIRST: u32 = 1;
/// The request is an HTTP/2 stream a probed server decoded (grpc-go): its
/// events carry one header field each as a `name: value\r\n` line (no
/// pseudo-headers), and a last one the empty line. Userspace puts a request
/// line before them, so one scanner reads HTTP/1 blocks and these alike.
pub const EVENT_FIELDS: u32 = 2;

/// One HTTP/2 stream of a redirected connection: `TAGGER_STREAM_TAGS`'s
/// key. The client's stream id is the one the proxy sees for the stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StreamKey {
    /// The client socket's cookie (`FlowOrigin::cookie`).
    pub cookie: u64,
    pub stream_id: u32,
    pub _pad: u32,
}

/// What the kernel saw when an app wrote the start of an HTTP request on a
/// redirected socket: which thread, and which inbound request that thread
/// was serving. The proxy consumes it (once) for the request it receives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestTag {
    pub pid_tgid: u64,
    /// `seq` of the thread's open inbound request; 0 when it had none.
    pub seq: u64,
    /// Kernel time of the write (ns, CLOCK_MONOTONIC).
    pub written_ns: u64,
    /// `TAG_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// The thread had more than one inbound request open (an event loop): the
/// correlation cannot be trusted.
pub const TAG_CONCURRENT: u32 = 1;
/// The process had stopped capturing inbound requests (it had only ever
/// served, never called a managed service) and just started calling: the
/// request that caused this one was not seen, so nothing can be trusted.
pub const TAG_UNSEEN: u32 = 2;
/// The goroutine that wrote the request was serving the inbound request
/// read on a connection, or an inbound HTTP/2 stream: `pid_tgid` is
/// `golang::conn_key(tgid, fd)` or `golang::stream_key(tgid, fd, id)`.
pub const TAG_GOROUTINE: u32 = 4;
/// The request may have been caused by an inbound request but tagger cannot
/// tell which: a process not yet classified, a Go process that could not
/// be probed, a goroutine whose request had already ended, or a Go request
/// not sent through `net/http`'s Transport. Nothing is inherited.
pub const TAG_UNTRUSTED: u32 = 8;
/// Inbound requests a process serves without calling any managed service
/// before the kernel stops capturing its reads (a leaf service).
pub const LEAF_AFTER_REQUESTS: u32 = 64;

/// How a process's requests are tied to the inbound requests that caused
/// them (`TAGGER_PROC_KINDS`, by tgid). A process of a pod without an entry
/// is unknown: the kernel asks the daemon to classify it and, until then,
/// trusts nothing it sends.
pub mod kind {
    /// The daemon was asked to classify the process and has not answered.
    pub const PENDING: u32 = 1;
    /// Not Go: one request per thread at a time (thread correlation).
    pub const THREADS: u32 = 2;
    /// A Go program with tagger's uprobes attached (goroutine correlation).
    pub const GO: u32 = 3;
    /// A Go program that could not be probed: nothing it sends is trusted.
    /// Thread correlation is never used for Go.
    pub const GO_UNPROBED: u32 = 4;
}

/// What the kernel tells the daemon about a pod's process
/// (`TAGGER_PROC_EVENTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub tgid: u32,
    /// `PROC_*`.
    pub what: u32,
}

/// The process is unknown or has just exec'd: classify it.
pub const PROC_CLASSIFY: u32 = 1;
/// A Go process exited or exec'd: detach its uprobes, forget it.
pub const PROC_EXIT: u32 = 2;
/// Capacity of `TAGGER_PROC_KINDS`: processes of pods a node tracks.
pub const MAX_PROCESSES: u32 = 16_384;

/// Counters kept by the kernel programs (per-CPU array indices).
pub mod stat {
    /// connect() calls seen on managed cgroups.
    pub const CONNECT_SEEN: u32 = 0;
    /// connect() calls redirected to the proxy.
    pub const CONNECT_REDIRECTED: u32 = 1;
    /// Redirected connections linked to their 4-tuple by sock_ops.
    pub const FLOW_LINKED: u32 = 2;
    /// Map updates that failed (map full or similar).
    pub const MAP_ERRORS: u32 = 3;
    /// Inbound HTTP request starts seen in pods.
    pub const INBOUND_REQUESTS: u32 = 4;
    /// Outbound HTTP request starts tagged on redirected sockets.
    pub const OUTBOUND_TAGGED: u32 = 5;
    /// Inbound events dropped because the ring buffer was full.
    pub const EVENTS_DROPPED: u32 = 6;
    /// connect() calls left direct because `flow_limit` redirected
    /// connections were open.
    pub const FLOWS_FULL: u32 = 7;
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all types are #[repr(C)], made only of integers, with explicit
    // padding fields, so every bit pattern is valid and there are no holes.
    unsafe impl aya::Pod for ProxyConfig {}
    unsafe impl aya::Pod for DestKey {}
    unsafe impl aya::Pod for DestInfo {}
    unsafe impl aya::Pod for FlowOrigin {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for RequestTag {}
    unsafe impl aya::Pod for StreamKey {}
    unsafe impl aya::Pod for ProcEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ProxyConfig>(), 24);
        assert_eq!(size_of::<DestKey>(), 8);
        assert_eq!(size_of::<DestInfo>(), 8);
        assert_eq!(size_of::<FlowOrigin>(), 24);
        assert_eq!(size_of::<FlowKey>(), 8);
        assert_eq!(size_of::<RequestTag>(), 32);
        assert_eq!(size_of::<StreamKey>(), 16);
        assert_eq!(size_of::<ProcEvent>(), 8);
        assert_eq!(size_of::<InboundEvent>(), 32 + CAPTURE_BYTES);
    }
}

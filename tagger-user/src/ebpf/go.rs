//! Process kinds and the Go uprobes, in the daemon's one kernel object (the
//! Go programs share their maps with the socket programs).
//!
//! Each probed process gets its own uprobes (perf events opened for that
//! process only, at file offsets `golang::inspect` found), so other
//! processes running the same file, and the rest of the node, never trap.
//! Its struct offsets are in the kernel before the first probe can fire.
use std::{collections::HashMap, num::NonZeroU32, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeLinkId, UProbeScope},
    },
};
use tagger_common::{golang::GoOffsets, names};

use super::{Datapath, EbpfError, Loaded};
use crate::golang::{Field, GoBinary, ProbeSymbol};

/// Why a Go process is not probed. It is then left exactly as it was, and
/// nothing it sends is trusted.
#[derive(Debug, thiserror::Error)]
pub enum GoAttachError {
    #[error("the kernel refused the Go uprobe programs: {0}")]
    Unsupported(String),
    #[error("the binary has no {0} (no net/http server or client?)")]
    NoSymbol(&'static str),
    #[error("no offset known for {0}")]
    NoOffset(Field),
    #[error("uprobe {name} at file offset {offset:#x}: {source}")]
    Attach {
        name: &'static str,
        offset: u64,
        source: Box<ProgramError>,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("pid 0 cannot be probed")]
    NoPid,
}

/// Where each program goes: at the function's entry, or at each RET.
#[derive(Clone, Copy)]
enum At {
    Entry,
    Rets,
}

/// The runtime's, always placed.
const PLACEMENT: [(ProbeSymbol, &str, At); 1] =
    [(ProbeSymbol::Newproc1, names::PROG_GO_NEWPROC_RET, At::Rets)];

/// net/http's client, placed when the binary has it (a gRPC-only program's
/// linker drops it).
const HTTP_PLACEMENT: [(ProbeSymbol, &str, At); 1] = [(
    ProbeSymbol::PersistConnRoundTrip,
    names::PROG_GO_ROUND_TRIP,
    At::Entry,
)];

/// grpc-go's (`tagger-ebpf/src/grpc.rs`), placed when the binary has
/// grpc-go and its offsets are known (`grpc_probes`).
const GRPC_PLACEMENT: [(ProbeSymbol, &str, At); 4] = [
    (
        ProbeSymbol::GrpcOperateHeaders,
        names::PROG_GRPC_OPERATE_HEADERS,
        At::Entry,
    ),
    (
        ProbeSymbol::GrpcWriteStatus,
        names::PROG_GRPC_WRITE_STATUS,
        At::Entry,
    ),
    (
        ProbeSymbol::GrpcCreateHeaderFields,
        names::PROG_GRPC_HEADER_FIELDS_RET,
        At::Rets,
    ),
    (
        ProbeSymbol::GrpcWriteHeader,
        names::PROG_GRPC_WRITE_HEADER,
        At::Entry,
    ),
];

/// Why a Go binary's grpc-go is not followed stream by stream (its gRPC
/// calls are then untrusted where it serves), or `None` when it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcSkipped {
    #[error("not linked")]
    NotLinked,
    #[error("grpc-go without {0} (another grpc-go version?)")]
    NoSymbol(&'static str),
    #[error("grpc-go's layout unknown: no {0} in DWARF (stripped binary?) or not where expected")]
    NoOffset(Field),
}

/// Whether grpc-go can be probed in `binary`.
pub fn grpc_probes(binary: &GoBinary) -> Result<(), GrpcSkipped> {
    let missing: Vec<ProbeSymbol> = ProbeSymbol::GRPC
        .into_iter()
        .filter(|s| binary.probe(*s).is_none())
        .collect();
    if missing.len() == ProbeSymbol::GRPC.len() {
        return Err(GrpcSkipped::NotLinked);
    }
    if let Some(symbol) = missing.first() {
        return Err(GrpcSkipped::NoSymbol(symbol.name()));
    }
    match binary.offsets.grpc_unknown() {
        Some(field) => Err(GrpcSkipped::NoOffset(field)),
        None => Ok(()),
    }
}

/// Whether net/http's client can be probed in `binary`.
fn http_client_probed(binary: &GoBinary) -> bool {
    binary.probe(ProbeSymbol::PersistConnRoundTrip).is_some()
        && binary.offsets.get(Field::PersistConnConn).is_some()
}

/// The offsets the programs read through, all of which must be known
/// (net/http's and grpc-go's only where their probes are placed). A binary
/// with neither client has nothing to follow.
pub fn go_offsets(binary: &GoBinary) -> Result<GoOffsets, GoAttachError> {
    let get = |field| {
        binary
            .offsets
            .get(field)
            .ok_or(GoAttachError::NoOffset(field))
    };
    let grpc = |field| match grpc_probes(binary) {
        Ok(()) => get(field),
        Err(_) => Ok(0),
    };
    if !http_client_probed(binary) && grpc_probes(binary).is_err() {
        return match binary.probe(ProbeSymbol::PersistConnRoundTrip) {
            None => Err(GoAttachError::NoSymbol(
                ProbeSymbol::PersistConnRoundTrip.name(),
            )),
            Some(_) => Err(GoAttachError::NoOffset(Field::PersistConnConn)),
        };
    }
    Ok(GoOffsets {
        goid: get(Field::GGoid)?,
        g_m: get(Field::GM)?,
        m_curg: get(Field::MCurg)?,
        g_startpc: get(Field::GStartpc)?,
        runtime_goroutines: binary.runtime_goroutines,
        persist_conn_conn: match http_client_probed(binary) {
            true => get(Field::PersistConnConn)?,
            false => 0,
        },
        tcpconn_conn: get(Field::TcpConnConn)?,
        conn_fd: get(Field::NetConnFd)?,
        netfd_pfd: get(Field::NetFdPfd)?,
        netfd_family: get(Field::NetFdFamily)?,
        netfd_sotype: get(Field::NetFdSotype)?,
        fd_sysfd: get(Field::PollFdSysfd)?,
        grpc: u64::from(grpc_probes(binary).is_ok()),
        grpc_server_conn: grpc(Field::GrpcServerConn)?,
        grpc_stream_id: grpc(Field::GrpcStreamId)?,
        grpc_loopy_framer: grpc(Field::GrpcLoopyFramer)?,
        grpc_framer_writer: grpc(Field::GrpcFramerWriter)?,
        grpc_writer_conn: grpc(Field::GrpcWriterConn)?,
    })
}

/// The Go side of the data path.
pub(super) struct GoPrograms {
    /// `Err`: the uprobe programs did not load (why), so no Go process can
    /// be probed.
    loaded: Result<(), String>,
    procs: BpfHashMap<MapData, u32, GoOffsets>,
    kinds: BpfHashMap<MapData, u32, u32>,
    links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
}

impl GoPrograms {
    /// Takes the maps and loads (verifies) the uprobe programs; attaches
    /// nothing. A kernel that refuses them still routes, and probes no Go.
    pub(super) fn load(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        let all = PLACEMENT
            .iter()
            .chain(&HTTP_PLACEMENT)
            .chain(&GRPC_PLACEMENT);
        let loaded = all.clone().try_for_each(|&(_, name, _)| {
            uprobe(ebpf, name)
                .and_then(|p| p.load().map_err(Box::new).map_err(program_error(name)))
                .map_err(|e| e.to_string())
        });
        if let Err(why) = &loaded {
            tracing::warn!(%why, "Go programs cannot be probed on this kernel; their calls stay untrusted");
        }
        let map_error = |map: &'static str| move |source| EbpfError::Map { map, source };
        let take = |ebpf: &mut Ebpf, name| ebpf.take_map(name).ok_or(EbpfError::Missing(name));
        Ok(Self {
            loaded,
            procs: BpfHashMap::try_from(take(ebpf, names::MAP_GO_PROCS)?)
                .map_err(map_error(names::MAP_GO_PROCS))?,
            kinds: BpfHashMap::try_from(take(ebpf, names::MAP_PROC_KINDS)?)
                .map_err(map_error(names::MAP_PROC_KINDS))?,
            links: HashMap::new(),
        })
    }
}

fn program_error(name: &'static str) -> impl Fn(Box<ProgramError>) -> GoAttachError {
    move |source| GoAttachError::Attach {
        name,
        offset: 0,
        source,
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, GoAttachError> {
    ebpf.program_mut(name)
        .ok_or(GoAttachError::Unsupported(format!(
            "the eBPF object has no {name}"
        )))?
        .try_into()
        .map_err(Box::new)
        .map_err(program_error(name))
}

impl Datapath {
    /// Tells the kernel how process `pid`'s requests are correlated
    /// (`tagger_common::kind`).
    pub fn set_process_kind(&self, pid: u32, kind: u32) -> Result<(), EbpfError> {
        let mut loaded = self.loaded.lock().expect("ebpf lock");
        loaded
            .go
            .kinds
            .insert(pid, kind, 0)
            .map_err(|source| EbpfError::Map {
                map: names::MAP_PROC_KINDS,
                source,
            })
    }

    /// The kind the kernel has for `pid`, if any.
    pub fn process_kind(&self, pid: u32) -> Option<u32> {
        let loaded = self.loaded.lock().expect("ebpf lock");
        loaded.go.kinds.get(&pid, 0).ok()
    }

    /// Probes Go process `pid`, which runs `exe` (a path the kernel can
    /// open, e.g. `/proc/PID/exe`), as `binary` describes it. Returns the
    /// number of uprobes placed. On error whatever was placed is removed.
    pub fn attach_go(
        &self,
        pid: u32,
        exe: &Path,
        binary: &GoBinary,
    ) -> Result<usize, GoAttachError> {
        let target = NonZeroU32::new(pid).ok_or(GoAttachError::NoPid)?;
        let offsets = go_offsets(binary)?;
        let mut points = Vec::new();
        let grpc = match grpc_probes(binary) {
            Ok(()) => &GRPC_PLACEMENT[..],
            Err(GrpcSkipped::NotLinked) => &[],
            Err(why) => {
                tracing::info!(pid, %why, "grpc-go not followed: its calls stay untrusted where it serves");
                &[]
            }
        };
        let http = match http_client_probed(binary) {
            true => &HTTP_PLACEMENT[..],
            false => &[],
        };
        for &(symbol, name, at) in PLACEMENT.iter().chain(http).chain(grpc) {
            let found = binary
                .probe(symbol)
                .ok_or(GoAttachError::NoSymbol(symbol.name()))?;
            match at {
                At::Entry => points.push((name, found.entry_offset)),
                At::Rets => points.extend(found.ret_offsets.iter().map(|&o| (name, o))),
            }
        }
        let mut guard = self.loaded.lock().expect("ebpf lock");
        let Loaded { ebpf, go } = &mut *guard;
        if let Err(why) = &go.loaded {
            return Err(GoAttachError::Unsupported(why.clone()));
        }
        // This daemon's own uprobes only: the offsets stay until replaced
        // below, because a predecessor handing over may still be probing
        // this process with them (removing them even for a moment would
        // drop the contexts of requests in flight).
        detach_links(ebpf, go, pid);
        go.procs
            .insert(pid, offsets, 0)
            .map_err(|source| GoAttachError::Map {
                map: names::MAP_GO_PROCS,
                source,
            })?;
        for (name, offset) in points {
            let attached = uprobe(ebpf, name).and_then(|program| {
                program
                    .attach(
                        UProbeAttachLocation::AbsoluteOffset(offset),
                        exe,
                        UProbeScope::OneProcess(target),
                    )
                    .map_err(|source| GoAttachError::Attach {
                        name,
                        offset,
                        source: Box::new(source),
                    })
            });
            match attached {
                Ok(link) => go.links.entry(pid).or_default().push((name, link)),
                Err(error) => {
                    detach(ebpf, go, pid);
                    return Err(error);
                }
            }
        }
        Ok(go.links.get(&pid).map_or(0, Vec::len))
    }

    /// Removes process `pid`'s uprobes and offsets (it exited or exec'd).
    pub fn detach_go(&self, pid: u32) {
        let mut guard = self.loaded.lock().expect("ebpf lock");
        let Loaded { ebpf, go } = &mut *guard;
        detach(ebpf, go, pid);
    }

    /// Entries of the process-kind and Go-process maps.
    pub(super) fn go_map_fill(&self) -> (usize, usize) {
        let loaded = self.loaded.lock().expect("ebpf lock");
        (
            loaded.go.kinds.keys().count(),
            loaded.go.procs.keys().count(),
        )
    }

    /// Processes with uprobes attached.
    pub fn go_probed(&self) -> Vec<u32> {
        let guard = self.loaded.lock().expect("ebpf lock");
        let mut pids: Vec<u32> = guard.go.links.keys().copied().collect();
        pids.sort_unstable();
        pids
    }
}

fn detach(ebpf: &mut Ebpf, go: &mut GoPrograms, pid: u32) {
    detach_links(ebpf, go, pid);
    let _ = go.procs.remove(&pid);
}

fn detach_links(ebpf: &mut Ebpf, go: &mut GoPrograms, pid: u32) {
    let mut taken = Vec::new();
    for (name, link) in go.links.remove(&pid).unwrap_or_default() {
        if let Ok(link) = uprobe(ebpf, name).and_then(|p| {
            p.take_link(link)
                .map_err(|e| program_error(name)(Box::new(e)))
        }) {
            taken.push(link);
        }
    }
    if !taken.is_empty() {
        release(taken);
    }
}

/// Closes uprobe links off the caller's thread. Each close waits for the
/// kernel's uprobe grace period (measured: stopping 5 probed pods, 65
/// links, kept a process started right after unprobed for seconds, its
/// first calls untrusted), and the caller is the one thread that
/// classifies new processes. The links are already out of the daemon's
/// books; a link whose close is still running only fires for a process
/// that has exited or exec'd (the probes are per process).
fn release(links: Vec<UProbeLink>) {
    let spawned = std::thread::Builder::new()
        .name("uprobe-release".into())
        .spawn(move || drop(links));
    if let Err(error) = spawned {
        // The links were moved into the failed closure and dropped here.
        tracing::debug!(%error, "closing uprobe links inline");
    }
}

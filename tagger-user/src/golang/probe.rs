//! Attaching the Go uprobes (`tagger-ebpf/src/golang.rs`) to running Go
//! processes, at the file offsets [`super::inspect`] found.
//!
//! Spike: the programs report every observation as a [`GoEvent`] and the
//! caller correlates (see `tests/go_probes.rs`). One [`GoProbes`] owns its
//! own copy of the kernel object; dropping it detaches everything.
use std::{collections::HashMap, num::NonZeroU32, path::Path};

use aya::{
    Btf, Ebpf,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::{
        BtfTracePoint, ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use tagger_common::{golang::GoOffsets, names};

use super::{Field, GoBinary, ProbeSymbol};
use crate::ebpf::ProgramStat;

#[derive(Debug, thiserror::Error)]
pub enum GoProbeError {
    #[error("loading the eBPF object failed (is this root, with bpf() allowed?): {0}")]
    Load(Box<aya::EbpfError>),
    #[error("the eBPF object has no {0} (was tagger-ebpf built from this tree?)")]
    Missing(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<ProgramError>,
    },
    #[error("uprobe {name} at file offset {offset:#x} of {path}: {source}")]
    Attach {
        name: &'static str,
        path: String,
        offset: u64,
        source: Box<ProgramError>,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the binary has no {0} (no net/http?): not probed")]
    NoSymbol(&'static str),
    #[error("no offset known for {0}: not probed")]
    NoOffset(Field),
    #[error("cannot read the kernel's BTF: {0}")]
    Btf(aya::BtfError),
    #[error("pid 0 cannot be probed")]
    NoPid,
}

/// (symbol, program at its entry, program at each of its RETs).
const PLACEMENT: [(ProbeSymbol, &str, Option<&str>); 4] = [
    (
        ProbeSymbol::ServerHandlerServeHttp,
        names::PROG_GO_SERVE,
        Some(names::PROG_GO_SERVE_RET),
    ),
    (
        ProbeSymbol::PersistConnRoundTrip,
        names::PROG_GO_ROUND_TRIP,
        Some(names::PROG_GO_ROUND_TRIP_RET),
    ),
    (
        ProbeSymbol::Newproc1,
        names::PROG_GO_NEWPROC,
        Some(names::PROG_GO_NEWPROC_RET),
    ),
    (ProbeSymbol::Goexit1, names::PROG_GO_GOEXIT, None),
];

const UPROBES: [&str; 7] = [
    names::PROG_GO_SERVE,
    names::PROG_GO_SERVE_RET,
    names::PROG_GO_ROUND_TRIP,
    names::PROG_GO_ROUND_TRIP_RET,
    names::PROG_GO_NEWPROC,
    names::PROG_GO_NEWPROC_RET,
    names::PROG_GO_GOEXIT,
];

/// The offsets the programs read through, all of which must be known.
pub fn go_offsets(binary: &GoBinary) -> Result<GoOffsets, GoProbeError> {
    let get = |field| {
        binary
            .offsets
            .get(field)
            .ok_or(GoProbeError::NoOffset(field))
    };
    Ok(GoOffsets {
        goid: get(Field::GGoid)?,
        persist_conn_conn: get(Field::PersistConnConn)?,
        conn_rwc: get(Field::HttpConnRwc)?,
        response_conn: get(Field::HttpResponseConn)?,
        tcpconn_conn: get(Field::TcpConnConn)?,
        conn_fd: get(Field::NetConnFd)?,
        netfd_pfd: get(Field::NetFdPfd)?,
        fd_sysfd: get(Field::PollFdSysfd)?,
    })
}

/// Which processes a process's uprobes fire for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The perf event is opened for the process (the kernel filters by its
    /// address space, so every thread of it).
    Process,
    /// Every process running the file; the programs keep only the tgids
    /// that have offsets.
    File,
}

pub struct GoProbes {
    ebpf: Ebpf,
    offsets: BpfHashMap<MapData, u32, GoOffsets>,
    events: Option<RingBuf<MapData>>,
    /// Links by process.
    links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
}

impl GoProbes {
    /// Loads the object and every Go uprobe program (the verifier's check);
    /// attaches nothing.
    pub fn load() -> Result<Self, GoProbeError> {
        let mut ebpf =
            Ebpf::load(crate::ebpf::OBJECT).map_err(|e| GoProbeError::Load(Box::new(e)))?;
        for name in UPROBES {
            uprobe(&mut ebpf, name)?
                .load()
                .map_err(|source| GoProbeError::Program {
                    name,
                    source: Box::new(source),
                })?;
        }
        let map_error = |map: &'static str| move |source| GoProbeError::Map { map, source };
        let offsets = ebpf
            .take_map(names::MAP_GO_OFFSETS)
            .ok_or(GoProbeError::Missing(names::MAP_GO_OFFSETS))?;
        let offsets = BpfHashMap::try_from(offsets).map_err(map_error(names::MAP_GO_OFFSETS))?;
        let events = ebpf
            .take_map(names::MAP_GO_EVENTS)
            .ok_or(GoProbeError::Missing(names::MAP_GO_EVENTS))?;
        let events = RingBuf::try_from(events).map_err(map_error(names::MAP_GO_EVENTS))?;
        Ok(Self {
            ebpf,
            offsets,
            events: Some(events),
            links: HashMap::new(),
        })
    }

    /// Also reports the socket reads and writes of probed processes (BTF
    /// tracepoints on every socket I/O of the node; spike only).
    pub fn trace_sockets(&mut self) -> Result<(), GoProbeError> {
        let btf = Btf::from_sys_fs().map_err(GoProbeError::Btf)?;
        for (name, tracepoint) in names::GO_SOCKET_TRACEPOINTS {
            let error = |source| GoProbeError::Program {
                name,
                source: Box::new(source),
            };
            let program: &mut BtfTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(GoProbeError::Missing(name))?
                .try_into()
                .map_err(error)?;
            program.load(tracepoint, &btf).map_err(error)?;
            program.attach().map_err(error)?;
        }
        Ok(())
    }

    /// Probes process `pid`, running the executable `exe` that `binary`
    /// describes. Its offsets are in place before the first probe can fire.
    /// On error, whatever was attached for it is detached again.
    pub fn attach(
        &mut self,
        pid: u32,
        exe: &Path,
        binary: &GoBinary,
        scope: Scope,
    ) -> Result<usize, GoProbeError> {
        let target = NonZeroU32::new(pid).ok_or(GoProbeError::NoPid)?;
        let offsets = go_offsets(binary)?;
        self.offsets
            .insert(pid, offsets, 0)
            .map_err(|source| GoProbeError::Map {
                map: names::MAP_GO_OFFSETS,
                source,
            })?;
        let scope = match scope {
            Scope::Process => UProbeScope::OneProcess(target),
            Scope::File => UProbeScope::AllProcesses,
        };
        let result = self.attach_all(pid, exe, binary, scope);
        if result.is_err() {
            self.detach(pid);
        }
        result
    }

    fn attach_all(
        &mut self,
        pid: u32,
        exe: &Path,
        binary: &GoBinary,
        scope: UProbeScope,
    ) -> Result<usize, GoProbeError> {
        let mut count = 0;
        for (symbol, entry, ret) in PLACEMENT {
            let target = binary
                .probe(symbol)
                .ok_or(GoProbeError::NoSymbol(symbol.name()))?;
            let mut points = vec![(entry, target.entry_offset)];
            if let Some(ret) = ret {
                points.extend(target.ret_offsets.iter().map(|&offset| (ret, offset)));
            }
            for (name, offset) in points {
                let link = uprobe(&mut self.ebpf, name)?
                    .attach(UProbeAttachLocation::AbsoluteOffset(offset), exe, scope)
                    .map_err(|source| GoProbeError::Attach {
                        name,
                        path: exe.display().to_string(),
                        offset,
                        source: Box::new(source),
                    })?;
                self.links.entry(pid).or_default().push((name, link));
                count += 1;
            }
        }
        Ok(count)
    }

    /// Keeps `pid`'s uprobes attached but has the programs return at once
    /// (its offsets go): measures the cost of the uprobes themselves.
    pub fn mute(&mut self, pid: u32) {
        let _ = self.offsets.remove(&pid);
    }

    /// Detaches process `pid`'s uprobes and forgets its offsets.
    pub fn detach(&mut self, pid: u32) {
        for (name, link) in self.links.remove(&pid).unwrap_or_default() {
            if let Ok(program) = uprobe(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
        let _ = self.offsets.remove(&pid);
    }

    /// The event ring (one reader: handed out once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Run counts and times of the Go programs (counted while
    /// `kernel.bpf_stats_enabled` is 1).
    pub fn program_stats(&self) -> Vec<ProgramStat> {
        crate::ebpf::program_stats(&self.ebpf, |name| name.starts_with("tagger_go_"))
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, GoProbeError> {
    ebpf.program_mut(name)
        .ok_or(GoProbeError::Missing(name))?
        .try_into()
        .map_err(|source| GoProbeError::Program {
            name,
            source: Box::new(source),
        })
}

//! Loading the kernel programs and talking to their maps.
//!
//! The programs are attached to one cgroup (the parent of every pod's cgroup)
//! through bpf links that this process owns: if the daemon dies, the kernel
//! closes the links and `connect()` goes straight to its destination again.
use std::{
    collections::HashSet,
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, SockOps},
};
use tagger_common::{
    DestInfo, DestKey, FlowKey, FlowOrigin, ProxyConfig, RequestTag, StreamKey, names, stat,
};

use crate::state::Destination;

mod go;
mod pins;
mod pod_flags;

pub use go::{GoAttachError, GrpcSkipped, go_offsets, grpc_probes};
pub use pins::{PinError, Pins};
pub use pod_flags::PodFlags;
use pod_flags::PodSlots;

/// The kernel object built by build.rs, aligned as the ELF parser wants.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tagger-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object failed (is this root, with bpf() allowed?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name} failed to load or attach to {cgroup}: {source}")]
    Program {
        name: &'static str,
        cgroup: PathBuf,
        source: aya::programs::ProgramError,
    },
    #[error("the eBPF object has no {0} (was tagger-ebpf built from this tree?)")]
    Missing(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "propagation program {name} failed to load or attach: {source} (does the kernel have BTF and tp_btf, 5.5 or later?)"
    )]
    Tracepoint {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("cannot read the kernel's BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF): {0}")]
    Btf(aya::BtfError),
    #[error(
        "cannot map {map} into memory: {source} (does the kernel support BPF_F_MMAPABLE, 5.5 or later?)"
    )]
    Mmap {
        map: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("cannot open cgroup {path}: {source} (is cgroup v2 mounted?)")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Counters of the kernel programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KernelStats {
    pub connect_seen: u64,
    pub connect_redirected: u64,
    pub flow_linked: u64,
    pub map_errors: u64,
    pub inbound_requests: u64,
    pub outbound_tagged: u64,
    pub events_dropped: u64,
    /// Connects left direct because `limits.max_kernel_flows` redirected
    /// connections were open.
    pub flows_full: u64,
}

/// The kernel object and what attaches to it after start (Go uprobes).
struct Loaded {
    // Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    go: go::GoPrograms,
}

/// How the programs are loaded: on maps pinned where, as which generation,
/// and whether the maps are a live predecessor's (a handover).
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub pins: Pins,
    /// This load's generation (see `ProxyConfig::generation`).
    pub generation: u32,
    /// The pinned maps are a running predecessor's: take over its pod
    /// slots and managed destinations instead of starting empty.
    pub adopt: bool,
}

impl LoadPlan {
    /// A daemon with no live predecessor: stale pins (a daemon killed
    /// with -9) are removed, the maps start empty, generation 1.
    pub fn fresh(bpffs: &Path) -> Result<Self, EbpfError> {
        let pins = Pins::for_object(bpffs, OBJECT)?;
        pins.prepare(bpffs)?;
        Pins::remove_all(bpffs);
        pins.prepare(bpffs)?;
        Ok(Self {
            pins,
            generation: 1,
            adopt: false,
        })
    }

    /// Taking over from a live predecessor of generation `previous` whose
    /// maps are pinned in `pins` (same layout).
    pub fn take_over(pins: Pins, previous: u32) -> Self {
        Self {
            pins,
            generation: previous.wrapping_add(1).max(1),
            adopt: true,
        }
    }
}

/// The pins of this build's map layout under `bpffs`.
pub fn pins_for_this_build(bpffs: &Path) -> Result<Pins, EbpfError> {
    Ok(Pins::for_object(bpffs, OBJECT)?)
}

pub struct Datapath {
    loaded: Mutex<Loaded>,
    pins: Pins,
    generation: u32,
    /// Set when a successor took over: this daemon no longer writes the
    /// shared maps (the successor owns them), it only serves what it has.
    frozen: AtomicBool,
    /// The config this daemon enabled (to change its flow limit live).
    enabled: Mutex<Option<ProxyConfig>>,
    flow_count: Array<MapData, i64>,
    pods_untracked: std::sync::atomic::AtomicUsize,
    config: Mutex<Array<MapData, ProxyConfig>>,
    managed: Mutex<BpfHashMap<MapData, DestKey, DestInfo>>,
    flows: Mutex<BpfHashMap<MapData, FlowKey, FlowOrigin>>,
    stats: PerCpuArray<MapData, u64>,
    installed: Mutex<HashSet<DestKey>>,
    pod_cgroups: Mutex<BpfHashMap<MapData, u64, u32>>,
    pod_slots: Mutex<PodSlots>,
    pod_flags: Arc<PodFlags>,
    request_tags: Mutex<BpfHashMap<MapData, u64, RequestTag>>,
    stream_tags: Mutex<BpfHashMap<MapData, StreamKey, RequestTag>>,
    events: Mutex<Option<RingBuf<MapData>>>,
    proc_events: Mutex<Option<RingBuf<MapData>>>,
}

fn dest_key(addr: SocketAddrV4) -> DestKey {
    DestKey {
        ip: u32::from(*addr.ip()).to_be(),
        port: addr.port().to_be(),
        _pad: 0,
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EbpfError> {
    ebpf.take_map(name).ok_or(EbpfError::Missing(name))
}

impl Datapath {
    /// Loads the programs on the maps `plan` pins and attaches them to
    /// `cgroup` (and so to every cgroup below it). They act only once
    /// [`Datapath::enable`] makes their generation the live one.
    pub fn attach(cgroup: &Path, plan: &LoadPlan) -> Result<Self, EbpfError> {
        let names = pins::map_names(OBJECT)?;
        let mut loader = EbpfLoader::new();
        loader.override_global(names::GLOBAL_GENERATION, &plan.generation, true);
        for name in &names {
            loader.map_pin_path(name.as_str(), plan.pins.map(name));
        }
        let mut ebpf = loader.load(OBJECT)?;
        let cgroup_file = File::open(cgroup).map_err(|source| EbpfError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let program_error = |name: &'static str| {
            let cgroup = cgroup.to_path_buf();
            move |source| EbpfError::Program {
                name,
                cgroup: cgroup.clone(),
                source,
            }
        };
        for name in [names::PROG_CONNECT4, names::PROG_CONNECT6] {
            let connect: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(EbpfError::Missing(name))?
                .try_into()
                .map_err(program_error(name))?;
            connect.load().map_err(program_error(name))?;
            connect
                .attach(&cgroup_file, CgroupAttachMode::Single)
                .map_err(program_error(name))?;
        }
        let sock_ops: &mut SockOps = ebpf
            .program_mut(names::PROG_SOCK_OPS)
            .ok_or(EbpfError::Missing(names::PROG_SOCK_OPS))?
            .try_into()
            .map_err(program_error(names::PROG_SOCK_OPS))?;
        sock_ops
            .load()
            .map_err(program_error(names::PROG_SOCK_OPS))?;
        sock_ops
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .map_err(program_error(names::PROG_SOCK_OPS))?;

        attach_propagation(&mut ebpf)?;

        let map_error = |map: &'static str| move |source| EbpfError::Map { map, source };
        let config = Array::try_from(take_map(&mut ebpf, names::MAP_CONFIG)?)
            .map_err(map_error(names::MAP_CONFIG))?;
        let managed = BpfHashMap::try_from(take_map(&mut ebpf, names::MAP_MANAGED)?)
            .map_err(map_error(names::MAP_MANAGED))?;
        let flows = BpfHashMap::try_from(take_map(&mut ebpf, names::MAP_FLOWS)?)
            .map_err(map_error(names::MAP_FLOWS))?;
        let flow_count = Array::try_from(take_map(&mut ebpf, names::MAP_FLOW_COUNT)?)
            .map_err(map_error(names::MAP_FLOW_COUNT))?;
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, names::MAP_STATS)?)
            .map_err(map_error(names::MAP_STATS))?;
        let pod_cgroups = BpfHashMap::try_from(take_map(&mut ebpf, names::MAP_POD_CGROUPS)?)
            .map_err(map_error(names::MAP_POD_CGROUPS))?;
        let request_tags = BpfHashMap::try_from(take_map(&mut ebpf, names::MAP_REQUEST_TAGS)?)
            .map_err(map_error(names::MAP_REQUEST_TAGS))?;
        let stream_tags = BpfHashMap::try_from(take_map(&mut ebpf, names::MAP_STREAM_TAGS)?)
            .map_err(map_error(names::MAP_STREAM_TAGS))?;
        let events = RingBuf::try_from(take_map(&mut ebpf, names::MAP_EVENTS)?)
            .map_err(map_error(names::MAP_EVENTS))?;
        let proc_events = RingBuf::try_from(take_map(&mut ebpf, names::MAP_PROC_EVENTS)?)
            .map_err(map_error(names::MAP_PROC_EVENTS))?;
        let go = go::GoPrograms::load(&mut ebpf)?;
        let pod_flags = match take_map(&mut ebpf, names::MAP_POD_TAGGED)? {
            aya::maps::Map::Array(data) => {
                PodFlags::map(data).map_err(|source| EbpfError::Mmap {
                    map: names::MAP_POD_TAGGED,
                    source,
                })?
            }
            _ => return Err(EbpfError::Missing(names::MAP_POD_TAGGED)),
        };
        let (installed, pod_slots) = if plan.adopt {
            adopt(&managed, &pod_cgroups)
        } else {
            (HashSet::new(), PodSlots::default())
        };
        Ok(Self {
            loaded: Mutex::new(Loaded { ebpf, go }),
            pins: plan.pins.clone(),
            generation: plan.generation,
            frozen: AtomicBool::new(false),
            enabled: Mutex::new(None),
            flow_count,
            pods_untracked: std::sync::atomic::AtomicUsize::new(0),
            config: Mutex::new(config),
            managed: Mutex::new(managed),
            flows: Mutex::new(flows),
            stats,
            installed: Mutex::new(installed),
            pod_cgroups: Mutex::new(pod_cgroups),
            pod_slots: Mutex::new(pod_slots),
            pod_flags: Arc::new(pod_flags),
            request_tags: Mutex::new(request_tags),
            stream_tags: Mutex::new(stream_tags),
            events: Mutex::new(Some(events)),
            proc_events: Mutex::new(Some(proc_events)),
        })
    }

    /// Turns redirection on: managed connects go to `proxy`, and this
    /// daemon's programs become the ones that act (after a handover, in
    /// one map write: the predecessor's stop in the same instant).
    pub fn enable(
        &self,
        proxy: SocketAddrV4,
        daemon_cgroup_id: u64,
        flow_limit: u32,
    ) -> Result<(), EbpfError> {
        let config = ProxyConfig {
            proxy_ip: u32::from(*proxy.ip()).to_be(),
            proxy_port: proxy.port().to_be(),
            _pad: 0,
            daemon_cgroup_id,
            generation: self.generation,
            flow_limit: flow_limit.min(tagger_common::MAX_FLOW_LIMIT),
        };
        self.set_config(config)?;
        *self.enabled.lock().expect("enabled lock") = Some(config);
        Ok(())
    }

    /// A new `limits.max_kernel_flows`, in force at once once enabled.
    pub fn set_flow_limit(&self, flow_limit: u32) -> Result<(), EbpfError> {
        let mut enabled = self.enabled.lock().expect("enabled lock");
        let Some(config) = enabled.as_mut() else {
            return Ok(());
        };
        let flow_limit = flow_limit.min(tagger_common::MAX_FLOW_LIMIT);
        if config.flow_limit == flow_limit || self.live_generation() != Some(self.generation) {
            return Ok(());
        }
        config.flow_limit = flow_limit;
        self.set_config(*config)
    }

    /// Redirected connections open, as the kernel counts them.
    pub fn open_flows(&self) -> i64 {
        self.flow_count.get(&0, 0).unwrap_or(0)
    }

    /// Turns redirection off (graceful shutdown: fail open before exiting),
    /// unless a successor's programs act by now: theirs is not ours to stop.
    pub fn disable(&self) -> Result<(), EbpfError> {
        if self.live_generation() != Some(self.generation) {
            return Ok(());
        }
        self.set_config(ProxyConfig {
            generation: self.generation,
            ..ProxyConfig::default()
        })
    }

    /// This load's generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The generation whose programs act now, from the shared config.
    pub fn live_generation(&self) -> Option<u32> {
        self.config
            .lock()
            .expect("config map lock")
            .get(&0, 0)
            .ok()
            .map(|c| c.generation)
    }

    pub fn handover_dump(&self) -> HandoverDump {
        HandoverDump {
            generation: self.generation,
            live_generation: self.live_generation(),
            layout: self.pins.layout.clone(),
            pins: self.pins.dir.clone(),
            frozen: self.is_frozen(),
        }
    }

    /// Where this daemon's maps are pinned.
    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// A successor took over: from now on this daemon leaves the shared
    /// maps alone (its state syncs become no-ops).
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// The successor went away before taking over: the maps are this
    /// daemon's again.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    fn set_config(&self, config: ProxyConfig) -> Result<(), EbpfError> {
        if self.is_frozen() {
            return Ok(());
        }
        self.config
            .lock()
            .expect("config map lock")
            .set(0, config, 0)
            .map_err(|source| EbpfError::Map {
                map: names::MAP_CONFIG,
                source,
            })
    }

    /// Makes the kernel's set of managed destinations equal to `wanted`.
    pub fn sync_managed(
        &self,
        wanted: impl Iterator<Item = (SocketAddrV4, Destination)>,
    ) -> Result<(), EbpfError> {
        if self.is_frozen() {
            return Ok(());
        }
        let mut managed = self.managed.lock().expect("managed map lock");
        let mut installed = self.installed.lock().expect("installed lock");
        let mut next = HashSet::new();
        for (addr, destination) in wanted {
            let key = dest_key(addr);
            let info = DestInfo {
                service_id: destination.service() as u32,
                kind: match destination {
                    Destination::ServiceAddress { .. } => tagger_common::DEST_KIND_SERVICE_ADDR,
                    Destination::Endpoint { .. } => tagger_common::DEST_KIND_ENDPOINT,
                },
            };
            managed
                .insert(key, info, 0)
                .map_err(|source| EbpfError::Map {
                    map: names::MAP_MANAGED,
                    source,
                })?;
            next.insert(key);
        }
        for stale in installed.difference(&next) {
            // Already gone is fine: the goal is that it is not there.
            let _ = managed.remove(stale);
        }
        *installed = next;
        Ok(())
    }

    /// The origin of an accepted connection, by its peer address. The
    /// entry stays until the client socket closes (the kernel removes it
    /// then and counts the connection out of `TAGGER_FLOW_COUNT`).
    pub fn take_flow(&self, peer: SocketAddrV4) -> Option<FlowOrigin> {
        let key = FlowKey {
            src_ip: u32::from(*peer.ip()).to_be(),
            src_port: peer.port().to_be(),
            _pad: 0,
        };
        self.flows.lock().expect("flows map lock").get(&key, 0).ok()
    }

    /// Makes the kernel's set of pod cgroups (whose socket I/O the
    /// propagation programs look at, and whose connects are redirected)
    /// equal to `wanted`, each with its slot in the pod flags. At most
    /// `capacity` pods are tracked: pods past it (new ones; those tracked
    /// keep their slot) are left out, so their calls go direct, never
    /// refused; they are counted and logged.
    pub fn sync_pod_cgroups(
        &self,
        wanted: &HashSet<u64>,
        capacity: usize,
    ) -> Result<(), EbpfError> {
        if self.is_frozen() {
            return Ok(());
        }
        let mut map = self.pod_cgroups.lock().expect("pod cgroups lock");
        let mut slots = self.pod_slots.lock().expect("pod slots lock");
        let gone: Vec<u64> = slots
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !wanted.contains(id))
            .collect();
        for id in gone {
            let _ = map.remove(&id);
            slots.release(id);
        }
        // In a stable order, so that which pods are left out does not
        // change from one sync to the next.
        let mut wanted: Vec<u64> = wanted.iter().copied().collect();
        wanted.sort_unstable();
        let mut untracked = 0;
        for id in wanted {
            let tracked = slots.get(id).is_some();
            let assigned = if tracked || slots.len() < capacity {
                slots.assign(id)
            } else {
                None
            };
            let Some((slot, new)) = assigned else {
                untracked += 1;
                continue;
            };
            if new {
                // Cleared before the kernel can find the pod by it.
                self.pod_flags.clear(slot);
                if let Err(source) = map.insert(id, slot, 0) {
                    // Not in the kernel: the pod goes direct; the next
                    // sync tries again.
                    slots.release(id);
                    untracked += 1;
                    tracing::warn!(cgroup = id, error = %source, "a pod cgroup could not be tracked; its calls go direct");
                }
            }
        }
        let before = self.pods_untracked.swap(untracked, Ordering::Relaxed);
        if untracked != before {
            if untracked > 0 {
                tracing::warn!(
                    untracked,
                    capacity,
                    "more pods than the kernel tracks (limits.max_tracked_pods): the calls of the pods left out go direct, without lanes"
                );
            } else {
                tracing::info!("every pod is tracked again");
            }
        }
        Ok(())
    }

    /// Pods left out of the kernel's tracking at the last sync.
    pub fn pods_untracked(&self) -> usize {
        self.pods_untracked.load(Ordering::Relaxed)
    }

    /// Every pod cgroup's slot and flag, for the config dump.
    pub fn pod_flag_rows(&self) -> Vec<PodFlagRow> {
        let slots = self.pod_slots.lock().expect("pod slots lock");
        let mut rows: Vec<PodFlagRow> = slots
            .iter()
            .map(|(cgroup_id, slot)| PodFlagRow {
                cgroup_id,
                slot,
                carried_context: self.pod_flags.is_set(slot),
            })
            .collect();
        rows.sort_by_key(|row| row.slot);
        rows
    }

    /// The pod flags and the slot of the pod with this cgroup, if it has one.
    pub fn pod_flag(&self, cgroup_id: u64) -> Option<(Arc<PodFlags>, u32)> {
        let slot = self
            .pod_slots
            .lock()
            .expect("pod slots lock")
            .get(cgroup_id)?;
        Some((self.pod_flags.clone(), slot))
    }

    /// What the kernel saw when the app wrote its newest request on the
    /// socket with this cookie. One lookup, no delete: the caller tells a
    /// tag it already used by its write time (see `proxy/http.rs`), and the
    /// entry goes when the socket closes or ages out of the LRU map.
    pub fn request_tag(&self, cookie: u64) -> Option<RequestTag> {
        self.request_tags
            .lock()
            .expect("request tags lock")
            .get(&cookie, 0)
            .ok()
    }

    /// What the kernel saw when a probed app queued HTTP/2 stream
    /// `stream_id` on the socket with this cookie (`tagger-ebpf/src/grpc.rs`).
    /// One lookup, no delete: a connection never reuses a stream id and a
    /// socket's cookie is never given to another, so the entry names that
    /// stream only, and ages out of the LRU map.
    pub fn stream_tag(&self, cookie: u64, stream_id: u32) -> Option<RequestTag> {
        let key = StreamKey {
            cookie,
            stream_id,
            _pad: 0,
        };
        self.stream_tags
            .lock()
            .expect("stream tags lock")
            .get(&key, 0)
            .ok()
    }

    /// How full the maps are (one key walk each: for dumps, not hot paths).
    pub fn map_fill(&self) -> MapFill {
        let (process_kinds, go_processes) = self.go_map_fill();
        MapFill {
            flows: self.flows.lock().expect("flows map lock").keys().count(),
            request_tags: self
                .request_tags
                .lock()
                .expect("request tags lock")
                .keys()
                .count(),
            pod_cgroups: self
                .pod_cgroups
                .lock()
                .expect("pod cgroups lock")
                .keys()
                .count(),
            process_kinds,
            go_processes,
            pods_untracked: self.pods_untracked(),
            flows_open: self.open_flows(),
            flow_limit: self
                .enabled
                .lock()
                .expect("enabled lock")
                .map_or(0, |c| c.flow_limit),
            capacity_flows: tagger_common::MAX_FLOWS,
            capacity_processes: tagger_common::MAX_PROCESSES,
        }
    }

    /// Destinations in `TAGGER_MANAGED` (for its fill level in metrics).
    pub fn managed_count(&self) -> usize {
        self.installed.lock().expect("installed lock").len()
    }

    /// Run counts and times of this daemon's programs, by their full names.
    pub fn program_stats(&self) -> Vec<ProgramStat> {
        program_stats(&self.loaded.lock().expect("ebpf lock").ebpf, |_| true)
    }

    /// The ring of questions about processes (classify, detach); one
    /// reader, handed out once.
    pub fn take_proc_events(&self) -> Option<RingBuf<MapData>> {
        self.proc_events.lock().expect("proc events lock").take()
    }

    /// The inbound-bytes ring buffer; there is one reader, so it is handed
    /// out once.
    pub fn take_events(&self) -> Option<RingBuf<MapData>> {
        self.events.lock().expect("events lock").take()
    }

    pub fn stats(&self) -> KernelStats {
        let sum = |index: u32| -> u64 {
            self.stats
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        KernelStats {
            connect_seen: sum(stat::CONNECT_SEEN),
            connect_redirected: sum(stat::CONNECT_REDIRECTED),
            flow_linked: sum(stat::FLOW_LINKED),
            map_errors: sum(stat::MAP_ERRORS),
            inbound_requests: sum(stat::INBOUND_REQUESTS),
            outbound_tagged: sum(stat::OUTBOUND_TAGGED),
            events_dropped: sum(stat::EVENTS_DROPPED),
            flows_full: sum(stat::FLOWS_FULL),
        }
    }
}

/// What a predecessor left in the shared maps: the managed destinations
/// it installed and the pods' slots.
fn adopt(
    managed: &BpfHashMap<MapData, DestKey, DestInfo>,
    pod_cgroups: &BpfHashMap<MapData, u64, u32>,
) -> (HashSet<DestKey>, PodSlots) {
    let installed = managed.keys().flatten().collect();
    let slots = PodSlots::adopt(pod_cgroups.iter().flatten());
    (installed, slots)
}

/// Entries in the maps userspace holds, against their capacity: what a
/// soak watches stay flat.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MapFill {
    pub flows: usize,
    pub request_tags: usize,
    pub pod_cgroups: usize,
    pub process_kinds: usize,
    pub go_processes: usize,
    pub capacity_flows: u32,
    pub capacity_processes: u32,
    /// Pods left out of tracking over `limits.max_tracked_pods` (their
    /// calls go direct).
    pub pods_untracked: usize,
    /// Redirected connections open (the kernel's count) and the most that
    /// may be (past it, connects go direct).
    pub flows_open: i64,
    pub flow_limit: u32,
}

/// A daemon's place in the handover chain (see `handover`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HandoverDump {
    /// This daemon's programs' generation.
    pub generation: u32,
    /// The generation whose programs act (another after a handover).
    pub live_generation: Option<u32>,
    /// The maps' layout key and pin directory.
    pub layout: String,
    pub pins: PathBuf,
    /// A successor owns the shared maps now.
    pub frozen: bool,
}

/// One pod cgroup's slot in the kernel's pod flags.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PodFlagRow {
    pub cgroup_id: u64,
    pub slot: u32,
    pub carried_context: bool,
}

/// Run time of one loaded program, from the kernel's BPF stats (counted
/// only while `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgramStat {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// Run counts and times of the loaded programs of `ebpf` whose names `keep`
/// accepts, sorted by name (programs not loaded have no stats).
pub fn program_stats(ebpf: &aya::Ebpf, keep: impl Fn(&str) -> bool) -> Vec<ProgramStat> {
    let mut stats: Vec<ProgramStat> = ebpf
        .programs()
        .filter(|(name, _)| keep(name))
        .filter_map(|(name, program)| {
            let info = program.info().ok()?;
            Some(ProgramStat {
                name: name.to_string(),
                run_count: info.run_count(),
                run_time_ns: info.run_time().as_nanos() as u64,
            })
        })
        .collect();
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    stats
}

/// The original destination recorded by the connect hook.
pub fn original_destination(origin: &FlowOrigin) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(origin.orig_ip)),
        u16::from_be(origin.orig_port),
    )
}

/// Attaches the propagation programs (BTF tracepoints: typed by the
/// kernel's own BTF, no tracefs needed). Their syscall layout is x86_64's;
/// elsewhere routing works and propagation is off.
fn attach_propagation(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    if !cfg!(target_arch = "x86_64") {
        tracing::warn!(
            "propagation through apps needs x86_64; lanes then come from headers, rules and pod lanes only"
        );
        return Ok(());
    }
    let btf = Btf::from_sys_fs().map_err(EbpfError::Btf)?;
    for (program, tracepoint) in names::BTF_TRACEPOINTS {
        let error = |source| EbpfError::Tracepoint {
            name: program,
            source,
        };
        let attach: &mut BtfTracePoint = ebpf
            .program_mut(program)
            .ok_or(EbpfError::Missing(program))?
            .try_into()
            .map_err(error)?;
        attach.load(tracepoint, &btf).map_err(error)?;
        attach.attach().map_err(error)?;
    }
    Ok(())
}

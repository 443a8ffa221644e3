//! The local cluster's source: the cluster file (lanes, services, pods,
//! rules, settings) joined with the placement `tagger cluster up` wrote
//! (each pod's address and cgroup, each service's address). Both files are
//! watched (inotify on their folders, as an edit is often a rename over the
//! file, for the events that can change them only; a stat every half
//! second besides, in case an event is missed); a
//! file that no longer parses or checks is reported and the state in force
//! stays.
use std::{
    ffi::OsString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{Source, Updates, publish};
use crate::{
    config::{ClusterFile, ConfigError},
    state::{
        EndpointEntry, FILE_NAMESPACE, Inventory, LaneEntry, PodEntry, PortMap, Readiness,
        RulesOrigin, ServiceEntry, ServicePort, SettingsSpec,
    },
};

/// The backstop to inotify: how often the files are looked at anyway
/// while inotify watches both folders (a timer is a wake-up of an idle
/// daemon: it is kept slow where it decides nothing).
pub const POLL: Duration = Duration::from_secs(2);
/// How often the files are looked at when inotify cannot watch one of
/// their folders (or stopped): polling is all there is then.
const POLL_UNWATCHED: Duration = Duration::from_millis(500);

/// Where the pods of the local cluster run: addresses and cgroups, written
/// by `tagger cluster up` when it starts them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Placement {
    pub pods: Vec<PlacedPod>,
    pub services: Vec<PlacedService>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlacedPod {
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlacedService {
    pub name: String,
    /// The virtual address callers reach the service by.
    pub address: std::net::Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("placement file {path}: {message}")]
    Placement { path: PathBuf, message: String },
    #[error("pod {pod:?} of the cluster file has no placement (was it started?)")]
    Unplaced { pod: String },
}

pub fn load_placement(path: &Path) -> Result<Placement, FileError> {
    let error = |message: String| FileError::Placement {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| error(e.to_string()))
}

/// The file and its placement as an inventory. Every pod of the file must
/// have been placed; readiness is the daemon's to probe (no kubelet here).
pub fn inventory(
    file: &ClusterFile,
    placement: &Placement,
    revision: u64,
) -> Result<Inventory, FileError> {
    let mut pods = Vec::new();
    let mut services = Vec::new();
    for spec in &file.services {
        let mut endpoints = Vec::new();
        for pod in &spec.pods {
            let placed = placement
                .pods
                .iter()
                .find(|p| p.name == pod.name)
                .ok_or_else(|| FileError::Unplaced {
                    pod: pod.name.clone(),
                })?;
            pods.push(PodEntry {
                name: pod.name.clone(),
                namespace: FILE_NAMESPACE.into(),
                ip: placed.ip,
                labels: pod.labels.clone().into_iter().collect(),
                lane: pod.lane.clone(),
                cgroup_ids: vec![placed.cgroup_id],
            });
            endpoints.extend(spec.port.map(|port| EndpointEntry {
                pod: pod.name.clone(),
                ip: placed.ip,
                ports: vec![PortMap {
                    port,
                    target_port: port,
                }],
                readiness: Readiness::Probe,
            }));
        }
        services.push(ServiceEntry {
            name: spec.name.clone(),
            namespace: FILE_NAMESPACE.into(),
            address: spec.port.and_then(|_| {
                placement
                    .services
                    .iter()
                    .find(|s| s.name == spec.name)
                    .map(|s| s.address)
            }),
            ports: spec
                .port
                .map(|port| ServicePort {
                    port,
                    protocol: spec.protocol,
                })
                .into_iter()
                .collect(),
            endpoints,
            pods: spec.pods.iter().map(|p| p.name.clone()).collect(),
            lane_header_from: spec.lane_header_from.clone(),
        });
    }
    Ok(Inventory {
        settings: SettingsSpec {
            lane_header: file.lane_header.clone(),
            passthrough_headers: file.passthrough_headers.clone(),
            body_match_limit: file.body_match_limit,
            limits: file.limits,
        },
        namespaces: Vec::new(),
        lanes: file
            .lanes
            .iter()
            .map(|lane| LaneEntry::new(FILE_NAMESPACE, lane))
            .collect(),
        services,
        pods,
        rules: file.rules.clone(),
        rules_origin: RulesOrigin::File { revision },
    })
}

/// What tells a file changed: a rename over it changes the inode, an edit
/// in place the time or size.
fn stamp(path: &Path) -> Option<(i64, i64, u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.ino(), m.size()))
}

pub struct FileSource {
    pub config: PathBuf,
    pub placement: PathBuf,
    /// How often the files are looked at besides inotify ([`POLL`]); at
    /// least every [`POLL_UNWATCHED`] while inotify cannot watch them all.
    pub poll: Duration,
}

/// The files as last read well.
struct Current {
    file: ClusterFile,
    placement: Placement,
    revision: u64,
    stamps: [Option<(i64, i64, u64, u64)>; 2],
}

impl FileSource {
    /// Reads both files; an error names the file and the place in it.
    pub fn load(&self) -> Result<Inventory, FileError> {
        let file = ClusterFile::load(&self.config)?;
        inventory(&file, &load_placement(&self.placement)?, 0)
    }

    fn stamps(&self) -> [Option<(i64, i64, u64, u64)>; 2] {
        [stamp(&self.config), stamp(&self.placement)]
    }

    /// Re-reads what changed; `None` when nothing did or a file is bad
    /// (reported; what was read before stays).
    fn reload(&self, current: &mut Current) -> Option<Inventory> {
        let stamps = self.stamps();
        if stamps == current.stamps {
            return None;
        }
        let config_changed = stamps[0] != current.stamps[0];
        current.stamps = stamps;
        let file = if config_changed {
            match ClusterFile::load(&self.config) {
                Ok(file) => Some(file),
                Err(e) => {
                    error!(error = %e, "cluster file changed but is not valid; keeping the state in force");
                    return None;
                }
            }
        } else {
            None
        };
        let placement = match load_placement(&self.placement) {
            Ok(placement) => placement,
            Err(e) => {
                error!(error = %e, "placement changed but is not valid; keeping the state in force");
                return None;
            }
        };
        // An edited file is the newest intent for rules too: a new revision
        // replaces what `tagger rules` changed.
        let revision = current.revision + u64::from(config_changed);
        let file_ref = file.as_ref().unwrap_or(&current.file);
        match inventory(file_ref, &placement, revision) {
            Ok(inventory) => {
                if let Some(file) = file {
                    current.file = file;
                }
                current.placement = placement;
                current.revision = revision;
                info!("cluster file or placement changed; reloading");
                Some(inventory)
            }
            Err(e) => {
                error!(error = %e, "reload refused; keeping the state in force");
                None
            }
        }
    }
}

impl Source for FileSource {
    type Error = FileError;

    async fn run(self, updates: Updates) -> Result<(), FileError> {
        let stamps = self.stamps();
        let file = ClusterFile::load(&self.config)?;
        let placement = load_placement(&self.placement)?;
        publish(&updates, inventory(&file, &placement, 0)?);
        let mut current = Current {
            file,
            placement,
            revision: 0,
            stamps,
        };
        let (tx, mut events) = mpsc::unbounded_channel();
        // Ends when `events` is dropped with this source.
        let (mut watching, all) = watch_folders(&[&self.config, &self.placement], tx);
        let unwatched = self.poll.min(POLL_UNWATCHED);
        let mut poll = tokio::time::interval(if all { self.poll } else { unwatched });
        loop {
            tokio::select! {
                event = events.recv(), if watching => {
                    if event.is_none() {
                        // The watcher is gone: polling alone from here.
                        watching = false;
                        poll = tokio::time::interval(unwatched);
                    }
                    // An edit is often several events; let them land.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while events.try_recv().is_ok() {}
                }
                _ = poll.tick() => {}
                () = updates.closed() => return Ok(()),
            }
            if let Some(inventory) = self.reload(&mut current) {
                publish(&updates, inventory);
            }
        }
    }
}

/// What is watched in the files' folders: a file written and closed, and
/// names coming and going (a rename over a file, an editor's swap, a
/// symlink switched as Kubernetes updates a mounted ConfigMap). Not every
/// write or open: a folder shared with a busy file (a log beside the
/// cluster file) sent the daemon an event per write.
const WATCHED: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE);

/// Does an event in a watched folder call for a look at the files? A file
/// closed after writing only when it is one of them (by name); any name
/// appearing or going (rare, and a rename over a file may use any name);
/// lost events (the queue overflowed) always.
pub(super) fn relevant(
    mask: EventMask,
    name: Option<&std::ffi::OsStr>,
    names: &[OsString],
) -> bool {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return true;
    }
    if mask.contains(EventMask::CLOSE_WRITE) {
        return name.is_some_and(|n| names.iter().any(|ours| ours == n));
    }
    mask.intersects(
        EventMask::MOVED_TO | EventMask::MOVED_FROM | EventMask::CREATE | EventMask::DELETE,
    )
}

/// inotify on the files' folders (a rename over a file is an event of its
/// folder, not of the file watched before): `tx` is sent a unit per
/// relevant event, until it is closed (and closed itself if watching
/// fails). Whether anything is watched, and whether every folder is.
fn watch_folders(files: &[&Path], tx: mpsc::UnboundedSender<()>) -> (bool, bool) {
    let inotify = match Inotify::init() {
        Ok(inotify) => inotify,
        Err(e) => {
            warn!(error = %e, "cannot watch the cluster files; polling them");
            return (false, false);
        }
    };
    let mut names = Vec::new();
    let mut watched = 0;
    for file in files {
        let folder = file.parent().filter(|p| !p.as_os_str().is_empty());
        let folder = folder.unwrap_or(Path::new("."));
        names.extend(file.file_name().map(OsString::from));
        match inotify.watches().add(folder, WATCHED) {
            Ok(_) => watched += 1,
            Err(e) => warn!(error = %e, folder = %folder.display(), "cannot watch; polling it"),
        }
    }
    let mut stream = match inotify.into_event_stream([0u8; 4096]) {
        Ok(stream) if watched > 0 => stream,
        Ok(_) => return (false, false),
        Err(e) => {
            warn!(error = %e, "cannot watch the cluster files; polling them");
            return (false, false);
        }
    };
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = tx.closed() => return,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(event)) => {
                    if relevant(event.mask, event.name.as_deref(), &names) && tx.send(()).is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "watching the cluster files failed; polling them");
                    return;
                }
                None => return,
            }
        }
    });
    (true, watched == files.len())
}

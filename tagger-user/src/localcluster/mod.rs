//! A local cluster on one Linux host: each pod is a network namespace plus a
//! cgroup, with its own address on a bridge; services get a virtual address
//! and a name in every pod's /etc/hosts. `up` starts the pods and the tagger
//! daemon and returns once everything answers; `down` removes all of it.
//!
//! Everything `up` makes is named with a fixed prefix and recorded under the
//! run directory, so `down` cleans up even after a crashed or interrupted
//! `up`.
mod net;
mod pods;

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    admin::AdminClient,
    config::{ClusterFile, ConfigError},
    source::file::{PlacedPod, PlacedService, Placement},
};

use net::NODE_IP;

pub const PROXY_PORT: u16 = 15001;
const CGROUP_NAME: &str = "tagger";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("a local cluster is already up (record {0}); run `cargo xtask down` first")]
    AlreadyUp(PathBuf),
    #[error(
        "another local cluster is up on this host (bridge {} or namespaces {}* exist); run `cargo xtask down` (or `tagger --run-dir DIR cluster down` for its run directory)",
        net::BRIDGE,
        net::NETNS_PREFIX
    )]
    OtherClusterUp,
    #[error("no local cluster is up (no {0}); run `cargo xtask up FILE`")]
    NotUp(PathBuf),
    #[error("no pod named {pod:?} in the cluster (pods: {known})")]
    NoSuchPod { pod: String, known: String },
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {secs} s{log}", secs = READY_TIMEOUT.as_secs())]
    NotReady { what: String, log: String },
    #[error("pod {pod} exited during start-up{log}")]
    PodExited { pod: String, log: String },
    #[error("pod {0} is already running; stop it first")]
    PodRunning(String),
    #[error("interrupted")]
    Interrupted,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Where a local cluster keeps its record, logs and sockets.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn record(&self) -> PathBuf {
        self.0.join("cluster.json")
    }
    pub fn placement(&self) -> PathBuf {
        self.0.join("placement.json")
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.0.join("admin.sock")
    }
    /// The daemon's bpf filesystem (pinned maps), mounted by the daemon.
    pub fn bpffs(&self) -> PathBuf {
        self.0.join("bpffs")
    }
    pub fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }
    pub fn pod_log(&self, pod: &str) -> PathBuf {
        self.logs().join(format!("{pod}.log"))
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.logs().join("daemon.log")
    }
    /// Scratch space of each pod (its `$TAGGER_POD_DIR`, as an emptyDir
    /// volume would be), removed by `down`.
    pub fn pods(&self) -> PathBuf {
        self.0.join("pods")
    }
    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        self.pods().join(pod)
    }
}

/// What `up` made, for `exec`, `down` and the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub config: PathBuf,
    /// Parent cgroup of all pods; the eBPF programs attach here.
    pub cgroup: PathBuf,
    pub pods: Vec<PodRecord>,
    pub daemon_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    pub service: String,
    pub netns: String,
    pub cgroup: PathBuf,
    pub ip: std::net::Ipv4Addr,
}

impl ClusterRecord {
    pub fn load(run_dir: &RunDir) -> Result<Self, ClusterError> {
        let path = run_dir.record();
        let text = std::fs::read_to_string(&path).map_err(|_| ClusterError::NotUp(path.clone()))?;
        serde_json::from_str(&text).map_err(|e| ClusterError::Io {
            what: format!("reading {}", path.display()),
            source: std::io::Error::other(e),
        })
    }

    fn save(&self, run_dir: &RunDir) -> Result<(), ClusterError> {
        write_json(&run_dir.record(), self)
    }

    pub fn pod(&self, name: &str) -> Result<&PodRecord, ClusterError> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ClusterError::NoSuchPod {
                pod: name.to_string(),
                known: self
                    .pods
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ClusterError> {
    let text = serde_json::to_string_pretty(value).expect("plain data serialises");
    // Write-then-rename: the daemon watching the file never reads half of it.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io_error(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_error(format!("renaming to {}", path.display())))
}

/// Starts the cluster described by `file`. On any failure (or Ctrl-C, which
/// the caller turns into dropping this future and calling [`down`])
/// everything made so far is removed.
pub async fn up(
    file: &Path,
    run_dir: &RunDir,
    tagger_exe: &Path,
) -> Result<ClusterRecord, ClusterError> {
    let file = std::fs::canonicalize(file).map_err(|source| ConfigError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let config = ClusterFile::load(&file)?;
    if run_dir.record().exists() {
        return Err(ClusterError::AlreadyUp(run_dir.record()));
    }
    // One local cluster per host: they share the bridge and the names. A
    // cluster of another run directory must not be swept by our clean-up.
    if !net::leftover_netns().is_empty() || net::leftover_links().iter().any(|l| l == net::BRIDGE) {
        return Err(ClusterError::OtherClusterUp);
    }
    match create(&file, &config, run_dir, tagger_exe).await {
        Ok(record) => Ok(record),
        Err(e) => {
            warn!(error = %e, "start-up failed; removing what was made");
            down(run_dir);
            Err(e)
        }
    }
}

async fn create(
    file: &Path,
    config: &ClusterFile,
    run_dir: &RunDir,
    tagger_exe: &Path,
) -> Result<ClusterRecord, ClusterError> {
    // Logs of an earlier cluster would mislead: start afresh.
    for dir in [run_dir.logs(), run_dir.pods()] {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
    }
    let cgroup_root = crate::cgroup::v2_root()
        .map_err(io_error("finding cgroup v2"))?
        .join(CGROUP_NAME);
    let mut record = ClusterRecord {
        config: file.to_path_buf(),
        cgroup: cgroup_root.clone(),
        pods: Vec::new(),
        daemon_pid: None,
    };
    // Saved first, so that `down` knows about a half-made cluster.
    record.save(run_dir)?;
    std::fs::create_dir_all(&cgroup_root).map_err(io_error(format!(
        "creating cgroup {}",
        cgroup_root.display()
    )))?;
    net::create_bridge()?;

    let mut placement = Placement::default();
    for (index, service) in config.services.iter().enumerate() {
        if service.port.is_some() {
            placement.services.push(PlacedService {
                name: service.name.clone(),
                address: net::service_ip(index),
            });
        }
    }
    let all_pods = config
        .services
        .iter()
        .flat_map(|s| s.pods.iter().map(move |p| (s, p)));
    for (index, (service, pod)) in all_pods.enumerate() {
        let ip = net::pod_ip(index);
        let cgroup = cgroup_root.join(&pod.name);
        std::fs::create_dir_all(&cgroup)
            .map_err(io_error(format!("creating cgroup {}", cgroup.display())))?;
        record.pods.push(PodRecord {
            name: pod.name.clone(),
            service: service.name.clone(),
            netns: net::netns_name(&pod.name),
            cgroup: cgroup.clone(),
            ip,
        });
        record.save(run_dir)?;
        net::create_pod_network(&pod.name, ip)?;
        placement.pods.push(PlacedPod {
            name: pod.name.clone(),
            ip,
            cgroup_id: crate::cgroup::id_of(&cgroup)
                .map_err(io_error(format!("cgroup id of {}", cgroup.display())))?,
        });
    }
    pods::write_hosts_files(config, &record, &placement)?;
    for pod in &record.pods {
        for service in &config.services {
            let (Some(port), Some(placed)) = (
                service.port,
                placement.services.iter().find(|s| s.name == service.name),
            ) else {
                continue;
            };
            let backends = kube_proxy_backends(service, &record);
            net::add_service_nat(&pod.name, placed.address, port, &backends)?;
        }
    }
    write_json(&run_dir.placement(), &placement)?;

    let base_dir = file.parent().unwrap_or(Path::new("/"));
    let mut children = HashMap::new();
    for service in &config.services {
        for pod in &service.pods {
            let pod_record = record.pod(&pod.name)?;
            let child = pods::spawn(pod, pod_record, base_dir, run_dir)?;
            children.insert(pod.name.clone(), child);
        }
    }
    // Pods first: the daemon's first health check then finds them ready.
    wait_for_endpoints(config, &record, run_dir, &mut children).await?;
    record.daemon_pid = Some(start_daemon(&record, run_dir, tagger_exe).await?);
    record.save(run_dir)?;
    info!(pods = record.pods.len(), "local cluster is up");
    Ok(record)
}

/// Backends of a service address while tagger is not routing it. A plain
/// Kubernetes Service would include every pod; we keep it to the baseline
/// pods (when there are any) so that, with the daemon down, traffic stays on
/// the stable versions rather than landing on gray ones at random.
fn kube_proxy_backends(
    service: &crate::config::ServiceSpec,
    record: &ClusterRecord,
) -> Vec<std::net::Ipv4Addr> {
    let ip_of = |name: &str| record.pods.iter().find(|p| p.name == name).map(|p| p.ip);
    let baseline: Vec<_> = service
        .pods
        .iter()
        .filter(|p| p.effective_lane().is_none())
        .filter_map(|p| ip_of(&p.name))
        .collect();
    if baseline.is_empty() {
        service.pods.iter().filter_map(|p| ip_of(&p.name)).collect()
    } else {
        baseline
    }
}

/// Starts `tagger daemon` for the cluster in the background and waits until
/// its admin API answers. Returns its pid.
pub async fn start_daemon(
    record: &ClusterRecord,
    run_dir: &RunDir,
    tagger_exe: &Path,
) -> Result<u32, ClusterError> {
    let proxy = SocketAddrV4::new(NODE_IP, PROXY_PORT);
    let mut child = pods::spawn_daemon(tagger_exe, record, run_dir, proxy)?;
    let pid = child.id();
    let client = AdminClient::new(&run_dir.admin_socket());
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        // Ready when this very daemon answers (a predecessor it takes over
        // from answers on the same socket until then).
        let answer = client
            .request(http::Method::GET, "/ready", bytes::Bytes::new())
            .await;
        if answer.is_ok_and(|body| {
            body.trim_ascii_end()
                .ends_with(format!("pid={pid}").as_bytes())
        }) {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ClusterError::NotReady {
                what: format!("tagger daemon (exited: {status})"),
                log: log_tail(&run_dir.daemon_log()),
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ClusterError::NotReady {
                what: "tagger daemon".into(),
                log: log_tail(&run_dir.daemon_log()),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_endpoints(
    config: &ClusterFile,
    record: &ClusterRecord,
    run_dir: &RunDir,
    children: &mut HashMap<String, Child>,
) -> Result<(), ClusterError> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for service in &config.services {
        let Some(port) = service.port else { continue };
        for pod in &service.pods {
            let pod_record = record.pod(&pod.name)?;
            let addr = SocketAddrV4::new(pod_record.ip, port);
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                let exited = children
                    .get_mut(&pod.name)
                    .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
                if exited {
                    return Err(ClusterError::PodExited {
                        pod: pod.name.clone(),
                        log: log_tail(&run_dir.pod_log(&pod.name)),
                    });
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(ClusterError::NotReady {
                        what: format!("pod {} (port {port})", pod.name),
                        log: log_tail(&run_dir.pod_log(&pod.name)),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

/// The last lines of a log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
    if tail.is_empty() {
        format!(" ({} is empty)", path.display())
    } else {
        format!("; last lines of {}:\n  {tail}", path.display())
    }
}

/// Removes everything `up` made: processes (by the pids in our cgroups and
/// the recorded daemon pid), namespaces, links, cgroups, hosts files and the
/// record. Safe to run twice and after a failed `up`. Returns the problems
/// it could not fix.
pub fn down(run_dir: &RunDir) -> Vec<String> {
    let mut problems = Vec::new();
    let record = ClusterRecord::load(run_dir).ok();
    let cgroup_root = record.as_ref().map(|r| r.cgroup.clone()).or_else(|| {
        crate::cgroup::v2_root()
            .ok()
            .map(|root| root.join(CGROUP_NAME))
    });
    // The pods first: their connections close, so the daemon has nothing
    // left to drain and stops at once, its programs detached as it exits.
    if let Some(root) = &cgroup_root {
        pods::kill_pods(root);
    }
    if let Some(pid) = record.as_ref().and_then(|r| r.daemon_pid) {
        pods::stop_daemon(pid, run_dir, Duration::from_secs(5));
    }
    // A daemon that handed over may still be finishing its connections.
    for pid in pods::our_daemons(run_dir) {
        pods::stop_daemon(pid, run_dir, Duration::from_secs(5));
    }
    if let Err(e) = pods::unmount_bpffs(&run_dir.bpffs()) {
        problems.push(e.to_string());
    }
    if let Some(root) = &cgroup_root
        && let Err(e) = pods::remove_cgroup_tree(root)
    {
        problems.push(e.to_string());
    }
    for netns in net::leftover_netns() {
        if let Err(e) = net::delete_netns(&netns) {
            problems.push(e.to_string());
        }
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&netns));
    }
    for link in net::leftover_links() {
        // Deleting one end of a veth removes the other: ignore "not found".
        if let Err(e) = net::delete_link(&link)
            && net::leftover_links().contains(&link)
        {
            problems.push(e.to_string());
        }
    }
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(net::NETNS_PREFIX)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(run_dir.pods());
    for path in [
        run_dir.record(),
        run_dir.placement(),
        run_dir.admin_socket(),
        crate::handover::socket_path(&run_dir.admin_socket()),
    ] {
        let _ = std::fs::remove_file(path);
    }
    problems
}

/// Runs `command` inside a pod (its cgroup and network namespace) with this
/// terminal's stdio; returns its exit code.
pub fn exec(run_dir: &RunDir, pod: &str, command: &[String]) -> Result<i32, ClusterError> {
    let record = ClusterRecord::load(run_dir)?;
    let pod = record.pod(pod)?;
    let status = pods::in_pod_command(pod, command)
        .status()
        .map_err(|source| ClusterError::Spawn {
            what: command.join(" "),
            source,
        })?;
    Ok(status.code().unwrap_or(128))
}

/// Starts the daemon again for the running cluster and records its pid, as
/// a rolling update does: if the old daemon still runs (stopping, or not
/// told yet), the new one takes over from it (see `handover`) and the old
/// one is then told to go (SIGTERM: it exits once its connections are
/// done). After a crash or a stop it simply starts.
pub async fn restart_daemon(run_dir: &RunDir, tagger_exe: &Path) -> Result<u32, ClusterError> {
    let mut record = ClusterRecord::load(run_dir)?;
    let old = record
        .daemon_pid
        .filter(|&pid| pods::is_alive(pid) && pods::is_our_daemon(pid, run_dir));
    let pid = start_daemon(&record, run_dir, tagger_exe).await?;
    record.daemon_pid = Some(pid);
    record.save(run_dir)?;
    if let Some(old) = old {
        pods::signal(old, libc::SIGTERM);
    }
    Ok(pid)
}

/// Stops a pod's processes (as a crash or a scale-down would); its network
/// and cgroup stay, so it can be started again.
pub fn stop_pod(run_dir: &RunDir, name: &str) -> Result<(), ClusterError> {
    let record = ClusterRecord::load(run_dir)?;
    pods::kill_cgroup(&record.pod(name)?.cgroup)
}

/// Starts a stopped pod's command again and waits until it accepts
/// connections on its service port.
pub async fn start_pod(run_dir: &RunDir, name: &str) -> Result<(), ClusterError> {
    let record = ClusterRecord::load(run_dir)?;
    let pod = record.pod(name)?;
    if !crate::cgroup::pids(&pod.cgroup)
        .unwrap_or_default()
        .is_empty()
    {
        return Err(ClusterError::PodRunning(name.to_string()));
    }
    let config = ClusterFile::load(&record.config)?;
    let (service, spec) = config
        .services
        .iter()
        .flat_map(|s| s.pods.iter().map(move |p| (s, p)))
        .find(|(_, p)| p.name == name)
        .ok_or_else(|| ClusterError::NoSuchPod {
            pod: name.to_string(),
            known: "(not in the cluster file any more)".into(),
        })?;
    let base_dir = record.config.parent().unwrap_or(Path::new("/"));
    let child = pods::spawn(spec, pod, base_dir, run_dir)?;
    let single = ClusterFile {
        services: vec![crate::config::ServiceSpec {
            name: service.name.clone(),
            port: service.port,
            protocol: service.protocol,
            lane_header_from: service.lane_header_from.clone(),
            pods: vec![spec.clone()],
        }],
        ..config.clone()
    };
    let mut children = HashMap::from([(name.to_string(), child)]);
    wait_for_endpoints(&single, &record, run_dir, &mut children).await
}

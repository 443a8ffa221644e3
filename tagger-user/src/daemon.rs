//! The node daemon's wiring: a source (the cluster file, or the Kubernetes
//! API) feeds the controller, which owns the state and the eBPF data path;
//! the proxy, the health checks, the admin API and the metrics listener run
//! beside it. Nothing here decides anything.
use std::{
    net::SocketAddrV4,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    controller::{Controller, ControllerError, SourceInfo},
    ebpf::{Datapath, EbpfError, LoadPlan},
    flows::FlowTable,
    handover::{
        self, HandoverError, ListenerRole,
        predecessor::{self, Handed, Predecessor},
        successor::Successor,
    },
    procs::Classifier,
    propagation::events::EventPump,
    proxy::{Proxy, ProxyConfig},
    source::{
        Source,
        file::FileSource,
        kube::{KubeConfig, KubeSource},
    },
    state::Inventory,
};

const HEALTH_INTERVAL: Duration = Duration::from_millis(1000);
/// How long a stopping daemon waits for open proxied connections to finish
/// (well within Kubernetes' default 30 s termination grace period).
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How long a new daemon waits for a stopping one to be gone: its drain
/// and then some.
const STOPPING_WAIT: Duration = Duration::from_secs(30);
/// How long an address in use may take to be free (a stopped daemon's
/// process exiting) before starting fails.
const BIND_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("{0}")]
    Source(Box<dyn std::error::Error + Send + Sync>),
    #[error("the state source stopped before its first inventory")]
    SourceEnded,
    #[error("cannot listen on {addr}: {source} (is another daemon running?)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot find this process's cgroup: {0}")]
    OwnCgroup(std::io::Error),
    #[error("stopped before the first state was known")]
    Interrupted,
    #[error("{0}")]
    Handover(String),
}

/// Where the state comes from.
#[derive(Debug, Clone)]
pub enum SourceArgs {
    /// The local cluster: its file and the placement `cluster up` wrote.
    File { config: PathBuf, placement: PathBuf },
    /// The Kubernetes API, as kubectl reaches it.
    Kubernetes(KubeConfig),
}

#[derive(Debug, Clone)]
pub struct DaemonArgs {
    pub source: SourceArgs,
    /// cgroup v2 directory the programs attach to (the pods' parent in a
    /// local cluster; `--cgroup-root` in Kubernetes).
    pub cgroup: PathBuf,
    pub proxy_addr: SocketAddrV4,
    pub admin_socket: PathBuf,
    /// Where Prometheus metrics, `/ready` and `/healthz` are served; none
    /// if `None`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The bpf filesystem the maps are pinned in (see `ebpf::Pins`).
    pub bpf_fs: PathBuf,
    /// On SIGTERM, how long to wait for a successor (see `handover`).
    pub handover_wait: Duration,
}

type Updates = watch::Receiver<Option<Arc<Inventory>>>;

/// Starts `source` and waits for its first whole inventory.
async fn start<S: Source>(source: S) -> Result<(Updates, Arc<Inventory>), DaemonError> {
    let (tx, mut rx) = watch::channel(None);
    let mut task: JoinHandle<Result<(), S::Error>> = tokio::spawn(source.run(tx));
    let first = tokio::select! {
        first = rx.wait_for(Option::is_some) => first.map(|f| f.clone()).ok().flatten(),
        ended = &mut task => {
            return Err(match ended {
                Ok(Err(e)) => DaemonError::Source(Box::new(e)),
                _ => DaemonError::SourceEnded,
            });
        }
        () = wait_for_shutdown() => return Err(DaemonError::Interrupted),
    };
    let first = first.ok_or(DaemonError::SourceEnded)?;
    tokio::spawn(async move {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "the state source stopped"),
            Err(e) => error!(error = %e, "the state source failed"),
        }
    });
    Ok((rx, first))
}

/// Runs the daemon until SIGINT, or SIGTERM and no successor (see
/// `handover`); after a successor took over, until its connections are
/// finished and a signal came.
pub async fn run(args: DaemonArgs) -> Result<(), DaemonError> {
    let flows = Arc::new(FlowTable::default());
    let handover_path = handover::socket_path(&args.admin_socket);
    let pins = crate::ebpf::pins_for_this_build(&args.bpf_fs)?;
    // A live predecessor hands over its sockets; else they are bound here.
    let mut successor = find_predecessor(&handover_path, &pins.layout).await?;
    if let Some(s) = &successor {
        info!(
            predecessor = s.predecessor_pid,
            generation = s.generation,
            "taking over from the running daemon"
        );
    }
    // Metrics first, so that liveness answers while the rest starts (in
    // Kubernetes the first sync may take a while).
    let metrics = Arc::new(crate::metrics::Hub::new(flows.clone()));
    let mut metrics_task = None;
    let mut metrics_fd = None;
    if let Some(addr) = args.metrics_addr {
        let listener = take_or_bind(&mut successor, ListenerRole::Metrics, addr).await?;
        metrics_fd = listener.as_fd().try_clone_to_owned().ok();
        metrics_task = Some(tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
        )));
    }
    let ((updates, first), info) = match &args.source {
        SourceArgs::File { config, placement } => (
            start(FileSource {
                config: config.clone(),
                placement: placement.clone(),
                poll: crate::source::file::POLL,
            })
            .await?,
            SourceInfo {
                source: "file",
                config_file: Some(config.clone()),
                placement_file: Some(placement.clone()),
                ..SourceInfo::default()
            },
        ),
        SourceArgs::Kubernetes(config) => {
            let source = KubeSource::connect(config.clone())
                .await
                .map_err(|e| DaemonError::Source(Box::new(e)))?;
            info!(node = %config.node_name, "waiting for the first sync with the Kubernetes API");
            (
                start(source).await?,
                SourceInfo {
                    source: "kubernetes",
                    node_name: Some(config.node_name.clone()),
                    cgroup_root: Some(config.cgroup_root.clone()),
                    ..SourceInfo::default()
                },
            )
        }
    };
    let controller = Arc::new(Controller::new(first, info, flows)?);
    controller.check_health().await;

    let listener = take_or_bind(
        &mut successor,
        ListenerRole::Proxy,
        std::net::SocketAddr::V4(args.proxy_addr),
    )
    .await?;
    let proxy_fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| DaemonError::Handover(e.to_string()))?;
    // Same map layout: load on the predecessor's pinned maps as its next
    // generation. Another layout: it fails open and this daemon starts on
    // fresh maps.
    let (plan, mut successor) = match successor {
        Some(mut s) if s.layout == pins.layout => {
            let generation = blocking(move || s.freeze().map(|g| (g, s))).await?;
            (LoadPlan::take_over(pins, generation.0), Some(generation.1))
        }
        Some(s) => {
            warn!(theirs = %s.layout, ours = %pins.layout, "the running daemon's maps have another layout: it fails open, this one starts afresh");
            blocking(move || s.retire()).await?;
            (LoadPlan::fresh(&args.bpf_fs)?, None)
        }
        None => (LoadPlan::fresh(&args.bpf_fs)?, None),
    };
    let datapath = Arc::new(Datapath::attach(&args.cgroup, &plan)?);
    // Loading parsed the kernel's BTF and the object (megabytes, now
    // freed): give those pages back rather than keep them resident.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    controller.set_datapath(datapath.clone())?;

    let pump = datapath.take_events().map(|events| {
        let pump = Arc::new(EventPump::new(
            events,
            controller.contexts.clone(),
            controller.state.clone(),
        ));
        controller.contexts.set_pump(pump.clone());
        pump
    });
    let proxy = Proxy::new(
        controller.state.clone(),
        datapath.clone(),
        controller.flows.clone(),
        controller.contexts.clone(),
        ProxyConfig::default(),
    );
    controller.set_connection_gate(proxy.gate());
    metrics.set_gate(proxy.gate());
    metrics.set_kernel(datapath.clone());
    // Every process already in a pod is classified (Go ones probed) before
    // redirection starts; later ones when the kernel first sees them.
    let classifier = Arc::new(Classifier::new(datapath.clone()));
    if let Some(ring) = datapath.take_proc_events() {
        tokio::spawn(classifier.clone().run(ring));
    }
    let pod_cgroups = controller.state.load().pod_cgroups();
    let scan = classifier.clone();
    let _ = tokio::task::spawn_blocking(move || scan.scan(&pod_cgroups)).await;
    controller.set_classifier(classifier.clone());
    // Changes are pushed by the source; only endpoint health is polled.
    tokio::spawn(controller.clone().follow(updates));
    {
        let controller = controller.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_INTERVAL).await;
                controller.check_health().await;
            }
        });
    }
    // Only now, with the first state applied, start redirecting: after a
    // handover this one write makes this daemon's programs the live ones.
    let own_cgroup = crate::cgroup::own_id().map_err(DaemonError::OwnCgroup)?;
    let flow_limit = controller.state.load().settings.limits.max_kernel_flows as u32;
    datapath.enable(args.proxy_addr, own_cgroup, flow_limit)?;
    if let Some(mut s) = successor.take() {
        match blocking(move || s.take_over().map(|snapshot| (snapshot, s))).await {
            Ok((snapshot, s)) => {
                let (threads, ids) = (snapshot.threads.len(), snapshot.ids.len());
                controller.contexts.import(snapshot);
                info!(threads, ids, "took over the running daemon's contexts");
                s.serve_predecessor(pump.clone());
            }
            // Live already: the predecessor's last contexts are lost, so
            // calls they caused are untrusted (never wrong).
            Err(error) => warn!(%error, "the predecessor did not hand over its contexts"),
        }
    }
    if let Some(pump) = &pump {
        tokio::spawn(pump.clone().run());
    }
    tokio::spawn(proxy.clone().serve(listener));
    let admin = crate::admin::bind(&args.admin_socket).map_err(|source| DaemonError::Listen {
        addr: args.admin_socket.display().to_string(),
        source,
    })?;
    tokio::spawn(crate::admin::serve(admin, controller.clone()));
    let mut listeners = vec![(ListenerRole::Proxy, proxy_fd)];
    listeners.extend(metrics_fd.map(|fd| (ListenerRole::Metrics, fd)));
    let (predecessor, mut handed) = Predecessor::listen(
        &handover_path,
        predecessor::Parts {
            listeners,
            datapath: datapath.clone(),
            classifier,
            pump,
            contexts: controller.contexts.clone(),
            state: controller.state.clone(),
        },
    )
    .map_err(|source| DaemonError::Listen {
        addr: handover_path.display().to_string(),
        source,
    })?;
    metrics.set_ready(true);
    info!(proxy = %args.proxy_addr, cgroup = %args.cgroup.display(), generation = datapath.generation(), "tagger daemon ready");

    let mut signals = Signals::new();
    let mut terminated = false;
    let handed_to = tokio::select! {
        handed = handed.recv() => handed,
        signal = signals.next() => {
            if signal == Signal::Interrupt {
                None
            } else {
                // SIGTERM: the first step of a rolling update. Keep serving
                // a while for the successor.
                terminated = true;
                info!(wait = ?args.handover_wait, "SIGTERM: serving on until a successor takes over");
                tokio::select! {
                    handed = handed.recv() => handed,
                    () = tokio::time::sleep(args.handover_wait) => None,
                    _ = signals.next() => None,
                }
            }
        }
    };
    metrics.set_ready(false);
    match handed_to {
        Some(Handed::TakenOver { pid }) => {
            // The successor's programs act and its proxy accepts on the same
            // socket: finish what is here.
            if let Some(task) = metrics_task {
                task.abort();
            }
            drain(&proxy).await;
            predecessor.drained();
            info!(successor = pid, "handed over; connections drained");
        }
        Some(Handed::Retired { pid }) => {
            if let Some(task) = metrics_task {
                task.abort();
            }
            fail_open(&datapath);
            drain(&proxy).await;
            datapath.pins().remove();
            predecessor.drained();
            info!(
                successor = pid,
                "retired for a successor with other maps; drained"
            );
        }
        None => {
            // No successor from here on; one already saying hello may be
            // loading on the pinned maps: they stay for it.
            let successor = predecessor.close();
            fail_open(&datapath);
            drain(&proxy).await;
            // The last daemon: nobody will take these maps over.
            if !successor {
                datapath.pins().remove();
            }
            let _ = std::fs::remove_file(&args.admin_socket);
            let _ = std::fs::remove_file(&handover_path);
            info!("tagger daemon stopped");
            return Ok(());
        }
    }
    // A Kubernetes pod that exits is restarted and would take the node
    // back: a daemon that handed over waits to be told to go.
    if !terminated {
        info!("waiting for SIGTERM or SIGINT");
        signals.next().await;
    }
    info!("tagger daemon stopped");
    Ok(())
}

/// Fail open first: from here on new connections go direct.
fn fail_open(datapath: &Datapath) {
    if let Err(e) = datapath.disable() {
        warn!(error = %e, "could not switch redirection off; links close on exit anyway");
    }
}

/// Lets the connections already here finish: HTTP/2 clients get GOAWAY and
/// their accepted streams are served to the end, HTTP/1.1 ones
/// `Connection: close` on their next answer.
async fn drain(proxy: &Proxy) {
    if !proxy.drain(DRAIN_GRACE).await {
        warn!(grace = ?DRAIN_GRACE, "connections still open after the grace period; closing them");
    }
}

/// The running daemon to take over from, if there is one. One that is
/// stopping with no successor (a SIGINT a moment ago) still drains and
/// still holds the pinned maps it will remove: this daemon starts once it
/// is gone (its socket file removed), not beside it.
async fn find_predecessor(path: &Path, layout: &str) -> Result<Option<Successor>, DaemonError> {
    let deadline = tokio::time::Instant::now() + STOPPING_WAIT;
    loop {
        let (path, layout) = (path.to_path_buf(), layout.to_string());
        let greeted = tokio::task::spawn_blocking(move || Successor::connect(&path, &layout))
            .await
            .map_err(|e| DaemonError::Handover(e.to_string()))?;
        match greeted {
            Err(HandoverError::Stopping(why)) if tokio::time::Instant::now() < deadline => {
                info!(%why, "the running daemon is stopping; starting once it is gone");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.map_err(|e| DaemonError::Handover(e.to_string())),
        }
    }
}

/// Runs a blocking handover step off the async threads.
async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, HandoverError> + Send + 'static,
) -> Result<T, DaemonError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| DaemonError::Handover(e.to_string()))?
        .map_err(|e| DaemonError::Handover(e.to_string()))
}

/// The predecessor's listening socket of `role` if it passed one for
/// `addr`, else a new one bound to `addr`.
async fn take_or_bind(
    successor: &mut Option<Successor>,
    role: ListenerRole,
    addr: std::net::SocketAddr,
) -> Result<TcpListener, DaemonError> {
    if let Some(fd) = successor.as_mut().and_then(|s| s.take_listener(role)) {
        let listener = std::net::TcpListener::from(fd);
        if listener.local_addr().ok() == Some(addr) {
            info!(%addr, ?role, "listening on the socket the predecessor handed over");
            return listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map_err(|source| DaemonError::Listen {
                    addr: addr.to_string(),
                    source,
                });
        }
        // Another address configured: the predecessor's is not ours.
    }
    // A daemon that stopped with no successor has removed its handover
    // socket but may not have exited yet: its listeners go with it.
    let deadline = tokio::time::Instant::now() + BIND_WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bound => {
                return bound.map_err(|source| DaemonError::Listen {
                    addr: addr.to_string(),
                    source,
                });
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Terminate,
    Interrupt,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
        }
    }
}

async fn wait_for_shutdown() {
    Signals::new().next().await;
}

/// Kept here for the CLI and the fuzz targets, which name it so.
pub use crate::controller::RuleRow;

//! The node daemon's wiring: a source (the cluster file, or the Kubernetes
//! API) feeds the controller, which owns the state and the eBPF data path;
//! the proxy, the health checks, the admin API and the metrics listener run
//! beside it. Nothing here decides anything.
use std::{net::SocketAddrV4, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    controller::{Controller, ControllerError, SourceInfo},
    ebpf::{Datapath, EbpfError},
    flows::FlowTable,
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

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: DaemonArgs) -> Result<(), DaemonError> {
    let flows = Arc::new(FlowTable::default());
    // Metrics first, so that liveness answers while the rest starts (in
    // Kubernetes the first sync may take a while).
    let metrics = Arc::new(crate::metrics::Hub::new(flows.clone()));
    if let Some(addr) = args.metrics_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }
    let ((updates, first), info) = match &args.source {
        SourceArgs::File { config, placement } => (
            start(FileSource {
                config: config.clone(),
                placement: placement.clone(),
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

    let listener =
        TcpListener::bind(args.proxy_addr)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: args.proxy_addr.to_string(),
                source,
            })?;
    let admin = crate::admin::bind(&args.admin_socket).map_err(|source| DaemonError::Listen {
        addr: args.admin_socket.display().to_string(),
        source,
    })?;
    let datapath = Arc::new(Datapath::attach(&args.cgroup)?);
    // Loading parsed the kernel's BTF and the object (megabytes, now
    // freed): give those pages back rather than keep them resident.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    controller.set_datapath(datapath.clone())?;

    if let Some(events) = datapath.take_events() {
        let pump = Arc::new(EventPump::new(
            events,
            controller.contexts.clone(),
            controller.state.clone(),
        ));
        controller.contexts.set_pump(pump.clone());
        tokio::spawn(pump.run());
    }
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
    controller.set_classifier(classifier);
    tokio::spawn(proxy.clone().serve(listener));
    tokio::spawn(crate::admin::serve(admin, controller.clone()));
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
    // Only now, with the proxy accepting and the first state applied,
    // start redirecting.
    let own_cgroup = crate::cgroup::own_id().map_err(DaemonError::OwnCgroup)?;
    datapath.enable(args.proxy_addr, own_cgroup)?;
    metrics.set_ready(true);
    info!(proxy = %args.proxy_addr, cgroup = %args.cgroup.display(), "tagger daemon ready");

    wait_for_shutdown().await;
    metrics.set_ready(false);
    // Fail open first: from here on new connections go direct.
    if let Err(e) = datapath.disable() {
        warn!(error = %e, "could not switch redirection off; links close on exit anyway");
    }
    // Then let the connections already here finish: HTTP/2 clients get
    // GOAWAY and their accepted streams are served to the end.
    if !proxy.drain(DRAIN_GRACE).await {
        warn!(grace = ?DRAIN_GRACE, "connections still open after the grace period; closing them");
    }
    let _ = std::fs::remove_file(&args.admin_socket);
    info!("tagger daemon stopped");
    Ok(())
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Kept here for the CLI and the fuzz targets, which name it so.
pub use crate::controller::RuleRow;

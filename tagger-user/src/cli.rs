//! Command-line interface. `main.rs` parses, this module dispatches.
use std::{net::SocketAddrV4, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::{
    ctl::{
        self, ViewOptions,
        cluster::{self, ClusterTarget},
    },
    daemon::{self, DaemonArgs, SourceArgs},
    localcluster::{self, RunDir},
    source::kube::kubectl_client,
};

#[derive(Debug, Parser)]
#[command(
    name = "tagger",
    version,
    about = "Lane routing for any language: eBPF flow tagging and a lane-aware node proxy"
)]
pub struct Cli {
    /// Where the local cluster and the daemon keep their record, logs and admin socket.
    #[arg(long, global = true, default_value = "/run/tagger")]
    pub run_dir: PathBuf,
    /// Admin socket of the daemon (default: RUN_DIR/admin.sock).
    #[arg(long, global = true)]
    pub admin_socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon: eBPF data path, lane-aware proxy, admin API.
    Daemon(DaemonCli),
    /// A local cluster of network-namespace pods (what `cargo xtask up|exec|down` run).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Show the flow-to-lane map: source pod, service, endpoint, lane, reason, counts.
    Flows(FlowsView),
    /// Show requests per second per lane per service.
    Lanes(View),
    /// List, apply, enable, disable or delete routing rules (live).
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Dump the daemon's effective config and live state as JSON.
    ConfigDump,
}

/// `tagger daemon`: a local cluster's (`--config`, `--placement`,
/// `--cgroup`, `--proxy-addr`, as `tagger cluster up` starts it) or a
/// Kubernetes node's (`--kubernetes`, SPEC.md's fixed interface).
#[derive(Debug, Args)]
pub struct DaemonCli {
    /// Run from the Kubernetes API (in-cluster service account, else
    /// KUBECONFIG) instead of a local cluster file.
    #[arg(long)]
    pub kubernetes: bool,
    /// The cluster file (lanes, services, rules).
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub config: Option<PathBuf>,
    /// Where the pods run (addresses, cgroup ids), JSON.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub placement: Option<PathBuf>,
    /// cgroup v2 directory to attach the eBPF programs to.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub cgroup: Option<PathBuf>,
    /// Address the proxy listens on; must be reachable from the pods.
    /// Kubernetes: default $HOST_IP:15001.
    #[arg(
        long = "proxy-addr",
        visible_alias = "proxy-address",
        value_name = "IP:PORT"
    )]
    pub proxy_addr: Option<SocketAddrV4>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (and /ready,
    /// /healthz); off unless given.
    #[arg(long = "metrics-address", value_name = "ADDR:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// A bpf filesystem where the kernel maps are pinned, so that the next
    /// daemon takes them over (mounted there if it is not one).
    #[arg(long = "bpf-fs", value_name = "DIR", default_value = "/sys/fs/bpf")]
    pub bpf_fs: PathBuf,
    /// On SIGTERM, how long to keep serving while waiting for a successor
    /// to take over (a rolling update) before failing open and draining.
    /// SIGINT stops at once.
    #[arg(long = "handover-wait-ms", value_name = "MS", default_value_t = 5000)]
    pub handover_wait_ms: u64,
    /// Kubernetes: this node's name (default: env NODE_NAME).
    #[arg(long, requires = "kubernetes")]
    pub node_name: Option<String>,
    /// Kubernetes: the cgroup v2 directory kubelet's pod cgroups are under;
    /// the programs attach here.
    #[arg(long, requires = "kubernetes", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Kubernetes: the header that carries the lane.
    #[arg(long, requires = "kubernetes", default_value = crate::config::DEFAULT_LANE_HEADER)]
    pub lane_header: String,
    /// Kubernetes: a header copied from a pod's inbound request onto the
    /// calls it causes (repeatable).
    #[arg(long = "passthrough-header", requires = "kubernetes")]
    pub passthrough_headers: Vec<String>,
}

impl DaemonCli {
    /// The daemon's arguments; `env` reads NODE_NAME and HOST_IP (the
    /// DaemonSet's downward API) where a flag is not given.
    pub fn daemon_args(
        self,
        admin_socket: PathBuf,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<DaemonArgs> {
        use anyhow::anyhow;
        let (source, cgroup, proxy_addr) = if self.kubernetes {
            let node_name = self
                .node_name
                .or_else(|| env("NODE_NAME"))
                .ok_or_else(|| anyhow!("--kubernetes needs --node-name or NODE_NAME"))?;
            let proxy_addr = match self.proxy_addr {
                Some(addr) => addr,
                None => {
                    let host = env("HOST_IP")
                        .ok_or_else(|| anyhow!("--kubernetes needs --proxy-address or HOST_IP"))?;
                    let ip = host
                        .parse()
                        .map_err(|e| anyhow!("HOST_IP {host:?} is not an IPv4 address: {e}"))?;
                    SocketAddrV4::new(ip, crate::source::kube::DEFAULT_PROXY_PORT)
                }
            };
            // Checked here, not after the first sync with the API.
            for (flag, name) in std::iter::once(("--lane-header", &self.lane_header)).chain(
                self.passthrough_headers
                    .iter()
                    .map(|h| ("--passthrough-header", h)),
            ) {
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| anyhow!("{flag} {name:?} is not a valid header name"))?;
            }
            let config = crate::source::kube::KubeConfig {
                node_name,
                cgroup_root: self.cgroup_root.clone(),
                lane_header: self.lane_header,
                passthrough_headers: self.passthrough_headers,
            };
            (SourceArgs::Kubernetes(config), self.cgroup_root, proxy_addr)
        } else {
            let missing = |flag: &str| anyhow!("{flag} is required without --kubernetes");
            (
                SourceArgs::File {
                    config: self.config.ok_or_else(|| missing("--config"))?,
                    placement: self.placement.ok_or_else(|| missing("--placement"))?,
                },
                self.cgroup.ok_or_else(|| missing("--cgroup"))?,
                self.proxy_addr.ok_or_else(|| missing("--proxy-addr"))?,
            )
        };
        Ok(DaemonArgs {
            source,
            cgroup,
            proxy_addr,
            admin_socket,
            metrics_addr: self.metrics_address,
            bpf_fs: self.bpf_fs,
            handover_wait: std::time::Duration::from_millis(self.handover_wait_ms),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start the cluster described by FILE and the daemon; return when ready.
    Up { file: PathBuf },
    /// Remove everything `up` made.
    Down,
    /// Run a command inside a pod's network namespace and cgroup.
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start the daemon again for the running cluster (after a stop or a crash).
    RestartDaemon,
    /// Stop a pod's processes (as if it crashed or was scaled down).
    StopPod { pod: String },
    /// Start a stopped pod's command again; return when it accepts connections.
    StartPod { pod: String },
    /// Print the cluster record (pods, addresses, cgroups, daemon pid) as JSON.
    Status,
}

#[derive(Debug, Args)]
pub struct FlowsView {
    #[command(flatten)]
    pub view: View,
    /// By path: which lane and endpoint served each gRPC service and method
    /// (other HTTP requests are counted per service only, method `-`).
    #[arg(long)]
    pub by_path: bool,
}

#[derive(Debug, Args)]
pub struct View {
    /// Refresh every second, in place.
    #[arg(long)]
    pub watch: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl View {
    fn options(&self) -> ViewOptions {
        ViewOptions {
            watch: self.watch,
            json: self.json,
        }
    }
}

/// `--kubernetes`: every node's daemon instead of this node's admin socket.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Every node's daemon, merged (NODE first): the daemon pods are found
    /// through the Kubernetes API as kubectl does (KUBECONFIG, else
    /// in-cluster) and each is asked on its metrics port.
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubernetes: the daemons' namespace.
    #[arg(short = 'n', long, requires = "kubernetes", default_value = cluster::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Kubernetes: the daemon pods' label selector.
    #[arg(short = 'l', long, requires = "kubernetes", default_value = cluster::DEFAULT_SELECTOR)]
    pub selector: String,
    /// Kubernetes: the daemons' metrics port (default: each pod's
    /// container port named `metrics`).
    #[arg(long, requires = "kubernetes", value_name = "PORT")]
    pub metrics_port: Option<u16>,
}

impl ClusterArgs {
    /// Where the daemons are, if `--kubernetes` was given.
    pub fn target(&self) -> Option<ClusterTarget> {
        self.kubernetes.then(|| ClusterTarget {
            namespace: self.namespace.clone(),
            selector: self.selector.clone(),
            metrics_port: self.metrics_port,
            timeout: cluster::NODE_TIMEOUT,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Rules in force with their hit counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Apply a rules file (`rules: [...]`): same-named rules are replaced.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
    Delete {
        name: String,
    },
}

pub fn init_tracing(cli: &Cli) {
    let default = match cli.command {
        Command::Daemon(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let run_dir = RunDir(cli.run_dir.clone());
    let socket = cli
        .admin_socket
        .clone()
        .unwrap_or_else(|| run_dir.admin_socket());
    match cli.command {
        Command::Daemon(args) => {
            daemon::run(args.daemon_args(socket, |name| std::env::var(name).ok())?).await?;
        }
        Command::Cluster(command) => return cluster(command, &run_dir).await,
        Command::Flows(FlowsView { view, by_path }) => match view.cluster.target() {
            Some(target) => {
                let client = kubectl_client().await?;
                cluster::flows(client, target, view.options(), by_path).await?
            }
            None => ctl::flows(&socket, view.options(), by_path).await?,
        },
        Command::Lanes(view) => match view.cluster.target() {
            Some(target) => cluster::lanes(kubectl_client().await?, target, view.options()).await?,
            None => ctl::lanes(&socket, view.options()).await?,
        },
        Command::Rules(command) => {
            let message = match command {
                RulesCommand::List { json } => {
                    ctl::rules_list(&socket, json).await?;
                    return Ok(ExitCode::SUCCESS);
                }
                RulesCommand::Apply { file } => ctl::rules_apply(&socket, &file).await?,
                RulesCommand::Enable { name } => {
                    ctl::rules_action(&socket, &name, "enable").await?
                }
                RulesCommand::Disable { name } => {
                    ctl::rules_action(&socket, &name, "disable").await?
                }
                RulesCommand::Delete { name } => {
                    ctl::rules_action(&socket, &name, "delete").await?
                }
            };
            println!("{message}");
        }
        Command::ConfigDump => ctl::config_dump(&socket).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn cluster(command: ClusterCommand, run_dir: &RunDir) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the tagger binary")?;
    match command {
        ClusterCommand::Up { file } => {
            // Registered before anything starts, so that a Ctrl-C during the
            // synchronous set-up is held until `up` yields, not fatal.
            let mut interrupt =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                    .context("installing the SIGINT handler")?;
            let result = tokio::select! {
                result = localcluster::up(&file, run_dir, &exe) => result,
                _ = interrupt.recv() => Err(localcluster::ClusterError::Interrupted),
            };
            match result {
                Ok(record) => {
                    println!(
                        "local cluster is up: {} pods; logs in {}",
                        record.pods.len(),
                        run_dir.logs().display()
                    );
                    for pod in &record.pods {
                        println!("  {:<14} {:<15} service {}", pod.name, pod.ip, pod.service);
                    }
                }
                Err(e) => {
                    // A failed `up` cleaned up after itself; an interrupted
                    // one was stopped part-way and cleans up here.
                    if matches!(e, localcluster::ClusterError::Interrupted) {
                        for p in localcluster::down(run_dir) {
                            eprintln!("cleanup: {p}");
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        ClusterCommand::Down => {
            let problems = localcluster::down(run_dir);
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("down: {p}");
                }
                return Ok(ExitCode::FAILURE);
            }
            println!("local cluster removed");
        }
        ClusterCommand::Exec { pod, command } => {
            let code = localcluster::exec(run_dir, &pod, &command)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        ClusterCommand::RestartDaemon => {
            let pid = localcluster::restart_daemon(run_dir, &exe).await?;
            println!("tagger daemon running, pid {pid}");
        }
        ClusterCommand::StopPod { pod } => {
            localcluster::stop_pod(run_dir, &pod)?;
            println!("pod {pod} stopped");
        }
        ClusterCommand::StartPod { pod } => {
            localcluster::start_pod(run_dir, &pod).await?;
            println!("pod {pod} running");
        }
        ClusterCommand::Status => {
            let record = localcluster::ClusterRecord::load(run_dir)?;
            println!("{}", serde_json::to_string_pretty(&record)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

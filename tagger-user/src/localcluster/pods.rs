//! Pod processes: started inside their cgroup and network namespace, stopped
//! by the pids in their cgroup (and only those).
use std::{
    fmt::Write as _,
    fs::{File, OpenOptions},
    net::SocketAddrV4,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{ClusterError, ClusterRecord, PodRecord, RunDir, io_error};
use crate::{config::ClusterFile, config::PodSpec, source::file::Placement};

/// A command that runs `command` inside the pod. It joins the pod's cgroup
/// first and then enters the namespace with `ip netns exec`, which also
/// bind-mounts the pod's /etc/hosts; the order matters because `ip netns
/// exec` remounts /sys.
pub fn in_pod_command(pod: &PodRecord, command: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec ip netns exec "$ns" "$@""#)
        .arg("tagger-pod")
        .arg(&pod.cgroup)
        .arg(&pod.netns)
        .args(command)
        .env("TAGGER_POD", &pod.name);
    cmd
}

fn log_file(path: &Path) -> Result<File, ClusterError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error(format!("opening log {}", path.display())))
}

/// Starts a pod's command in the background, its output in its log file.
/// Relative paths in the command resolve against `base_dir` (the cluster
/// file's folder), which is also its working directory; `$TAGGER_POD_DIR` is
/// a scratch directory of its own.
pub fn spawn(
    spec: &PodSpec,
    pod: &PodRecord,
    base_dir: &Path,
    run_dir: &RunDir,
) -> Result<Child, ClusterError> {
    let out = log_file(&run_dir.pod_log(&pod.name))?;
    let scratch = run_dir.pod_dir(&pod.name);
    std::fs::create_dir_all(&scratch)
        .map_err(io_error(format!("creating {}", scratch.display())))?;
    let err = out
        .try_clone()
        .map_err(io_error("duplicating log handle"))?;
    let mut command = spec.command.clone();
    if command[0].contains('/') && !command[0].starts_with('/') {
        command[0] = base_dir.join(&command[0]).display().to_string();
    }
    let mut cmd = in_pod_command(pod, &command);
    cmd.current_dir(base_dir)
        .envs(&spec.env)
        .env("TAGGER_POD_DIR", &scratch)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Own process group: a Ctrl-C meant for `up` does not hit the pods;
        // `down` stops them through their cgroup.
        .process_group(0);
    cmd.spawn().map_err(|source| ClusterError::Spawn {
        what: format!("pod {}: {}", pod.name, spec.command.join(" ")),
        source,
    })
}

/// Where the local cluster's daemon serves metrics, if set.
pub const METRICS_ADDRESS_ENV: &str = "TAGGER_METRICS_ADDRESS";

pub fn spawn_daemon(
    exe: &Path,
    record: &ClusterRecord,
    run_dir: &RunDir,
    proxy: SocketAddrV4,
) -> Result<Child, ClusterError> {
    let out = log_file(&run_dir.daemon_log())?;
    let err = out
        .try_clone()
        .map_err(io_error("duplicating log handle"))?;
    let mut command = Command::new(exe);
    command
        .arg("daemon")
        .arg("--config")
        .arg(&record.config)
        .arg("--placement")
        .arg(run_dir.placement())
        .arg("--cgroup")
        .arg(&record.cgroup)
        .arg("--proxy-addr")
        .arg(proxy.to_string())
        .arg("--admin-socket")
        .arg(run_dir.admin_socket())
        // The cluster's own bpf filesystem for the pinned maps, unmounted
        // by `down`.
        .arg("--bpf-fs")
        .arg(run_dir.bpffs());
    // Prometheus metrics for a local cluster: `TAGGER_METRICS_ADDRESS=
    // 127.0.0.1:15090 cargo xtask up FILE` (the daemon is started here, so
    // its flags are not the user's to give).
    if let Some(addr) = std::env::var_os(METRICS_ADDRESS_ENV) {
        command.arg("--metrics-address").arg(addr);
    }
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| ClusterError::Spawn {
            what: format!("{} daemon", exe.display()),
            source,
        })
}

/// /etc/netns/<netns>/hosts for every pod: service names to service
/// addresses, pod names to pod addresses.
pub fn write_hosts_files(
    config: &ClusterFile,
    record: &ClusterRecord,
    placement: &Placement,
) -> Result<(), ClusterError> {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for service in &placement.services {
        let _ = writeln!(hosts, "{}\t{}", service.address, service.name);
    }
    for pod in &record.pods {
        let _ = writeln!(hosts, "{}\t{}", pod.ip, pod.name);
    }
    debug_assert!(config.services.iter().all(|s| !s.name.is_empty()));
    for pod in &record.pods {
        let dir = Path::new("/etc/netns").join(&pod.netns);
        std::fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
        std::fs::write(dir.join("hosts"), &hosts)
            .map_err(io_error(format!("writing {}/hosts", dir.display())))?;
        // Names resolve from the hosts file. A nameserver on the pod's own
        // loopback fails at once, where the node's (unreachable from a pod)
        // would make every reverse lookup wait for a timeout.
        std::fs::write(
            dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .map_err(io_error(format!("writing {}/resolv.conf", dir.display())))?;
    }
    Ok(())
}

pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; a zombie has exited.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Is `pid` the daemon this run directory started? Its command line says
/// `daemon` and names this run directory's admin socket (whatever the
/// binary is called): a pid reused by another process never matches.
pub fn is_our_daemon(pid: u32, run_dir: &RunDir) -> bool {
    let socket = run_dir.admin_socket();
    let socket = socket.as_os_str().as_encoded_bytes();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.get(1) == Some(&&b"daemon"[..])
                && args
                    .windows(2)
                    .any(|pair| pair[0] == b"--admin-socket" && pair[1] == socket)
        })
        .unwrap_or(false)
}

pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid we recorded and just checked is ours.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Stops the recorded daemon: SIGINT (it switches redirection off, drains
/// and exits at once: SIGTERM would wait for a successor), then SIGKILL
/// after `grace`. A pid that is no longer a tagger daemon (reused) is left
/// alone.
pub fn stop_daemon(pid: u32, run_dir: &RunDir, grace: Duration) {
    if !is_alive(pid) || !is_our_daemon(pid, run_dir) {
        return;
    }
    signal(pid, libc::SIGINT);
    let deadline = Instant::now() + grace;
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_alive(pid) {
        signal(pid, libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(3);
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Kills every process of every pod under `root` (best effort: the cgroups
/// are removed, killing again, afterwards).
pub fn kill_pods(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            let _ = kill_cgroup(&entry.path());
        }
    }
}

/// Daemons of this cluster still running (by their `--admin-socket`).
pub fn our_daemons(run_dir: &RunDir) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&pid| is_our_daemon(pid, run_dir))
        .collect()
}

/// Unmounts and removes the cluster's bpf filesystem (its pins go with it).
pub fn unmount_bpffs(path: &Path) -> Result<(), ClusterError> {
    if !path.exists() {
        return Ok(());
    }
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io_error(format!("bpffs path {}", path.display()))(e.into()))?;
    // SAFETY: umount2(2) with a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    let error = std::io::Error::last_os_error();
    if rc != 0 && error.raw_os_error() != Some(libc::EINVAL) {
        // EINVAL: not mounted (the daemon never started).
        return Err(io_error(format!("unmounting {}", path.display()))(error));
    }
    std::fs::remove_dir_all(path).map_err(io_error(format!("removing {}", path.display())))
}

/// Kills every process in each pod cgroup under `root`, then removes them.
pub fn remove_cgroup_tree(root: &Path) -> Result<(), ClusterError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_pod_cgroup(&path)?;
        }
    }
    std::fs::remove_dir(root).map_err(io_error(format!("removing cgroup {}", root.display())))
}

/// Empties and removes one pod cgroup. A pod process started a moment ago
/// may join it between the kill and the removal (EBUSY): kill again.
fn remove_pod_cgroup(path: &Path) -> Result<(), ClusterError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        kill_cgroup(path)?;
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(ClusterError::Io {
                    what: format!("removing cgroup {}", path.display()),
                    source: e,
                });
            }
        }
    }
}

/// Kills every process in one cgroup (only ours: the pod's).
pub fn kill_cgroup(path: &Path) -> Result<(), ClusterError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = crate::cgroup::pids(path).unwrap_or_default();
        if pids.is_empty() {
            return Ok(());
        }
        // cgroup.kill (5.14+) kills the whole cgroup at once, forks included.
        if std::fs::write(path.join("cgroup.kill"), "1").is_err() {
            for pid in pids {
                signal(pid as u32, libc::SIGKILL);
            }
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Io {
                what: format!("processes of {} did not exit", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

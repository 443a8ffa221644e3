//! One node's `tagger daemon --kubernetes`: its own proxy address, admin
//! socket, bpf filesystem, metrics port and cgroup root; the API found
//! through `KUBECONFIG`, set on the child only.
use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::NodesError;
use crate::{eventually, tagger_bin};

/// Where the proxies listen (on each node's address).
pub const PROXY_PORT: u16 = 15001;
/// How long a daemon may take to list everything and attach.
const READY_LIMIT: Duration = Duration::from_secs(30);

pub struct Node {
    pub name: &'static str,
    /// The node's address on the bridge: its proxy's, its pods' gateway.
    pub ip: Ipv4Addr,
    pub cgroup_root: PathBuf,
    /// Admin socket, bpf filesystem and log are in here.
    pub dir: PathBuf,
    pub metrics: SocketAddr,
    child: Option<Child>,
}

impl Node {
    pub fn new(name: &'static str, ip: Ipv4Addr, cgroup_root: PathBuf, dir: PathBuf) -> Self {
        Node {
            name,
            ip,
            cgroup_root,
            dir,
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
            child: None,
        }
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the daemon and waits until `/ready` says its programs are
    /// attached (after its first whole sync with the API).
    pub fn start(&mut self, kubeconfig: &Path) -> Result<(), NodesError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| NodesError::Io(format!("opening {}", self.log().display()), e))?;
        let err = log
            .try_clone()
            .map_err(|e| NodesError::Io("duplicating a log handle".into(), e))?;
        let mut command = Command::new(tagger_bin());
        command
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .args(["daemon", "--kubernetes", "--node-name", self.name])
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--proxy-address")
            .arg(format!("{}:{PROXY_PORT}", self.ip))
            .arg("--metrics-address")
            .arg(self.metrics.to_string())
            .arg("--bpf-fs")
            .arg(self.bpffs())
            .args(["--passthrough-header", "mse-username"])
            .args(["--passthrough-header", "x-user-id"])
            .env("KUBECONFIG", kubeconfig)
            // Not a pod of a cluster: no in-cluster service account.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|e| NodesError::Command("tagger daemon".into(), e.to_string()))?;
        self.child = Some(child);
        let ready = eventually(READY_LIMIT, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Some(Err(format!("exited: {status}")));
            }
            (http_status(self.metrics, "/ready") == Some(200)).then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => Ok(()),
            why => Err(NodesError::DaemonNotReady {
                node: self.name,
                why: why.map_or_else(
                    || format!("not ready within {READY_LIMIT:?}"),
                    |r| r.unwrap_err(),
                ),
                log: tail(&self.log()),
            }),
        }
    }

    /// Sends `signal` to the daemon and waits for it to exit.
    pub fn signal_and_wait(&mut self, signal: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        let exited = eventually(Duration::from_secs(5), || child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon (SIGINT: at once, redirection off) and unmounts
    /// its bpf filesystem.
    pub fn stop(&mut self) -> Result<(), NodesError> {
        self.signal_and_wait(libc::SIGINT);
        unmount(&self.bpffs())
    }

    /// `tagger flows --json` of this node.
    pub fn flows(&self) -> Vec<serde_json::Value> {
        let json = self.tagger(&["flows", "--json"]);
        json.as_array().cloned().unwrap_or_default()
    }

    pub fn config_dump(&self) -> serde_json::Value {
        self.tagger(&["config-dump"])
    }

    /// Whether the daemon found the cgroups of `pod` (`namespace/name`):
    /// only then are its calls routed.
    pub fn knows_cgroups_of(&self, pod: &str) -> bool {
        self.cgroups_of(pod).is_some_and(|ids| !ids.is_empty())
    }

    /// The cgroup ids the daemon has for `pod` (`namespace/name`), if it
    /// has the pod.
    pub fn cgroups_of(&self, pod: &str) -> Option<Vec<u64>> {
        let dump = self.config_dump();
        let pods = dump["state"]["pods"].as_array()?;
        let found = pods.iter().find(|p| p["name"] == pod)?;
        let ids = found["cgroup_ids"].as_array()?;
        Some(ids.iter().filter_map(serde_json::Value::as_u64).collect())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn tagger(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(tagger_bin())
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .args(args)
            .output()
            .expect("running tagger");
        assert!(
            out.status.success(),
            "{}: tagger {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON from tagger")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A port free on loopback now (the metrics listener binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The status of `GET path`, if anything answered.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Unmounts a bpf filesystem the daemon mounted (its pins go with it) and
/// removes the directory.
pub fn unmount(path: &Path) -> Result<(), NodesError> {
    if !path.exists() {
        return Ok(());
    }
    let target =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in a path");
    // SAFETY: umount2(2) with a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    let error = std::io::Error::last_os_error();
    // EINVAL: not a mount point (the daemon never got that far).
    if rc != 0 && error.raw_os_error() != Some(libc::EINVAL) {
        return Err(NodesError::Io(
            format!("unmounting {}", path.display()),
            error,
        ));
    }
    std::fs::remove_dir_all(path)
        .map_err(|e| NodesError::Io(format!("removing {}", path.display()), e))
}

/// The last lines of a log, for failures.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n  ")
}

//! A pod of the two-node cluster: a container cgroup where kubelet would
//! make it on its node, a network namespace, and its app's process in both.
use std::{
    fs::File,
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{
    NodesError,
    cgroups::{self, Driver},
    daemon::{Node, tail},
    fixture::{NODE_IPS, PORT, PodDef},
    net,
};
use crate::{eventually, workspace};

pub struct RunningPod {
    pub def: PodDef,
    pub uid: String,
    /// The container's cgroup, where its processes are.
    cgroup: PathBuf,
    /// The pod's cgroup (the container's parent), removed with it.
    pod_cgroup: PathBuf,
    child: Child,
}

impl RunningPod {
    /// Makes the pod's cgroup and network, lets `configure` finish the
    /// network (hosts, kube-proxy), then starts its app.
    pub fn start(
        def: PodDef,
        uid: String,
        nodes: &[Node; 2],
        run_dir: &Path,
        configure: impl FnOnce(&str) -> Result<(), NodesError>,
    ) -> Result<Self, NodesError> {
        // node-a as kubelet's systemd driver, node-b as its cgroupfs one.
        let driver = [Driver::Systemd, Driver::Cgroupfs][def.node];
        // A container id as runtimes make them: 64 hex digits.
        let container = format!("{:0>64}", uid.replace('-', ""));
        let cgroup = cgroups::container_dir(
            &nodes[def.node].cgroup_root,
            driver,
            def.qos,
            &uid,
            &container,
        );
        cgroups::create(&cgroup)?;
        let pod_cgroup = cgroup.parent().expect("a pod directory").to_path_buf();
        net::create_pod_network(def.name, def.ip, NODE_IPS[def.node])?;
        configure(def.name)?;
        let child = spawn(&def, &cgroup, run_dir)?;
        Ok(RunningPod {
            def,
            uid,
            cgroup,
            pod_cgroup,
            child,
        })
    }

    /// Waits until a Service's pod accepts connections (what its readiness
    /// probe would say); a plain pod at once.
    pub fn wait_listening(&mut self, run_dir: &Path) -> Result<(), NodesError> {
        if self.def.service.is_none() {
            return Ok(());
        }
        let addr = SocketAddr::from((self.def.ip, PORT));
        let up = eventually(Duration::from_secs(20), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(drop)
        });
        let exited = self.child.try_wait().ok().flatten();
        let procs = std::fs::read_to_string(self.cgroup.join("cgroup.procs")).unwrap_or_default();
        let sockets = net::run(
            "ip",
            &["netns", "exec", &net::netns(self.def.name), "ss", "-ltn"],
        );
        up.ok_or_else(|| NodesError::PodNotListening {
            pod: self.def.name,
            addr: addr.to_string(),
            log: format!(
                "{}\n  (exited: {exited:?}; processes in its cgroup: {procs:?}; listening: {sockets:?})",
                tail(&run_dir.join("pods").join(format!("{}.log", self.def.name)))
            ),
        })
    }

    /// Its container's cgroup id (the directory's inode in cgroup v2).
    pub fn cgroup_id(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.cgroup).ok().map(|m| m.ino())
    }

    pub fn command(&self, command: &[&str]) -> Command {
        in_pod(&self.cgroup, self.def.name, command)
    }

    /// Kills its processes, removes its cgroups and network.
    pub fn stop(mut self) -> Result<(), NodesError> {
        let result = cgroups::remove_tree(&self.pod_cgroup);
        let _ = self.child.wait();
        net::remove_pod_network(self.def.name);
        result
    }
}

fn spawn(def: &PodDef, cgroup: &Path, run_dir: &Path) -> Result<Child, NodesError> {
    let log_path = run_dir.join("pods").join(format!("{}.log", def.name));
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| NodesError::Io(format!("opening {}", log_path.display()), e))?;
    let err = log
        .try_clone()
        .map_err(|e| NodesError::Io("duplicating a log handle".into(), e))?;
    let command: Vec<&str> = def.command.iter().map(String::as_str).collect();
    in_pod(cgroup, def.name, &command)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own group: a signal meant for the test does not hit it; it
        // is stopped through its cgroup.
        .process_group(0)
        .spawn()
        .map_err(|e| NodesError::Command(format!("pod {}", def.name), e.to_string()))
}

/// `command` in the pod: it joins the container's cgroup first, then enters
/// the namespace with `ip netns exec` (which also mounts the pod's hosts
/// file); in that order because `ip netns exec` remounts /sys.
fn in_pod(cgroup: &Path, pod: &str, command: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec ip netns exec "$ns" "$@""#)
        .arg("tagger-pod")
        .arg(cgroup)
        .arg(net::netns(pod))
        .args(command)
        .current_dir(workspace())
        .env("TAGGER_POD", pod);
    cmd
}

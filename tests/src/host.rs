//! What a local cluster leaves on the host, and the pre-clean that recovers
//! from an earlier run that crashed (or was killed by a time limit) before
//! it could take its cluster down.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{tagger_bin, text};

/// Run directories of this harness: `RUN_DIR_PREFIX<pid>[-n]` in the temp dir.
pub const RUN_DIR_PREFIX: &str = "tagger-e2e-";
const CGROUP_ROOTS: [&str; 2] = ["/sys/fs/cgroup/unified/tagger", "/sys/fs/cgroup/tagger"];

/// Everything a cluster may leave behind: network namespaces and their
/// `/etc/netns` folders, links, the pods' cgroup tree, tagger daemon
/// processes, and BPF links and programs of tagger's. Empty when clean.
/// [`host_leftovers`] once the kernel has had a moment: a daemon that
/// exited leaves its bpf programs and links to the kernel, which frees them
/// shortly after the process is gone (the last file references of an
/// exiting task are put from a workqueue). Netns, links and cgroups must be
/// gone at once; only bpf objects are waited for (up to 5 s).
pub fn settled_leftovers() -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = host_leftovers();
        let only_bpf = left.iter().all(|l| l.starts_with("bpf "));
        if left.is_empty() || !only_bpf || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn host_leftovers() -> Vec<String> {
    let mut left = Vec::new();
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    left.extend(
        text(&netns.stdout)
            .lines()
            .filter(|l| l.starts_with("tagger-"))
            .map(|l| format!("netns {l}")),
    );
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        left.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tagger-"))
                .map(|n| format!("/etc/netns/{n}")),
        );
    }
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    left.extend(
        text(&links.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n == "tagger0" || n.starts_with("tv-") || n.starts_with("tp-"))
            .map(|n| format!("link {n}")),
    );
    for root in CGROUP_ROOTS {
        if Path::new(root).exists() {
            left.push(format!("cgroup {root}"));
        }
    }
    left.extend(
        tagger_daemons()
            .into_iter()
            .map(|(pid, run_dir)| format!("daemon pid {pid} ({})", run_dir.display())),
    );
    left.extend(tagger_bpf_objects());
    left
}

/// Running `tagger daemon` processes: (pid, their run directory).
pub fn tagger_daemons() -> Vec<(i32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_tagger = args.first().is_some_and(|a| a.ends_with("tagger"));
        if !is_tagger || !args.iter().any(|a| a == "daemon") {
            continue;
        }
        // The daemon is started with the admin socket of its run directory.
        let socket = args
            .windows(2)
            .find(|w| w[0] == "--admin-socket")
            .map(|w| PathBuf::from(&w[1]));
        let run_dir = socket
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        found.push((pid, run_dir));
    }
    found
}

/// BPF programs named `tagger_*` that are still loaded (held by a link, a
/// pin or a process), and the links that hold them.
fn tagger_bpf_objects() -> Vec<String> {
    let bpftool = |what: &str| -> serde_json::Value {
        let out = Command::new("bpftool")
            .args(["-j", what, "show"])
            .output()
            .expect("bpftool (installed by `cargo xtask setup`)");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let progs = bpftool("prog");
    let ours: Vec<(u64, String)> = progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            name.starts_with("tagger_")
                .then(|| (p["id"].as_u64().unwrap_or(0), name.to_string()))
        })
        .collect();
    let mut left: Vec<String> = ours
        .iter()
        .map(|(id, name)| format!("bpf prog {id} {name}"))
        .collect();
    let links = bpftool("link");
    for link in links.as_array().into_iter().flatten() {
        let prog = link["prog_id"].as_u64().unwrap_or(0);
        if let Some((_, name)) = ours.iter().find(|(id, _)| *id == prog) {
            left.push(format!("bpf link {} -> {name}", link["id"]));
        }
    }
    left
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Takes down what an earlier run of these tests left: clusters whose test
/// process is gone (their daemons, pods, namespaces, links, cgroups) and
/// their run directories. Clusters of live processes are left alone.
pub fn preclean() {
    let me = std::process::id() as i32;
    let owner = |run_dir: &Path| -> Option<i32> {
        let name = run_dir.file_name()?.to_str()?;
        let rest = name.strip_prefix(RUN_DIR_PREFIX)?;
        rest.split('-').next()?.parse().ok()
    };
    let mut stale: Vec<PathBuf> = Vec::new();
    for (_, run_dir) in tagger_daemons() {
        if owner(&run_dir).is_some_and(|pid| pid != me && !pid_alive(pid)) {
            stale.push(run_dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let path = entry.path();
            if owner(&path).is_some_and(|pid| pid != me && !pid_alive(pid)) {
                stale.push(path);
            }
        }
    }
    stale.sort();
    stale.dedup();
    let daemons = tagger_daemons();
    for run_dir in &stale {
        eprintln!(
            "pre-clean: taking down the cluster of a finished run ({})",
            run_dir.display()
        );
        // `down` stops the recorded daemon (by its pid, checked to be the
        // daemon of that run directory) and removes the pods and network.
        let _ = Command::new(tagger_bin())
            .arg("--run-dir")
            .arg(run_dir)
            .args(["cluster", "down"])
            .output();
        // A daemon whose record was already gone is stopped by its pid.
        for (pid, _) in daemons.iter().filter(|(_, dir)| dir == run_dir) {
            stop(*pid);
        }
        let _ = std::fs::remove_dir_all(run_dir);
    }
}

/// SIGINT (stop at once: SIGTERM would wait for a successor), then SIGKILL
/// if it is still there after 3 s.
fn stop(pid: i32) {
    // SAFETY: kill(2) on a pid just read from /proc as a tagger daemon of a
    // run directory of this harness whose test process is gone.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while pid_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if pid_alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

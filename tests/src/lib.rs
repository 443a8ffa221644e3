//! Harness for the privileged end-to-end tests: a local cluster started with
//! the real `tagger` binary, commands run inside its pods, and the daemon's
//! flow map read back through the CLI.
//!
//! These tests need root. Without it they fail (never skip): `cargo xtask
//! test` is the way to run them.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

/// The tagger binary under test: `TAGGER_BIN` (set by `cargo xtask test`),
/// else the workspace's debug build.
pub fn tagger_bin() -> PathBuf {
    std::env::var_os("TAGGER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/tagger"))
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn cluster_file(name: &str) -> PathBuf {
    workspace().join("tests/clusters").join(name)
}

fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "end-to-end tests need root (run `cargo xtask test` as root); this is a failure, not a skip"
    );
    assert!(
        tagger_bin().exists(),
        "{} is not built: run `cargo xtask test`",
        tagger_bin().display()
    );
}

/// A running local cluster, removed on drop (also when a test panics).
pub struct Cluster {
    run_dir: PathBuf,
}

impl Cluster {
    pub fn up(file: &str) -> Self {
        require_root();
        let run_dir = std::env::temp_dir().join(format!("tagger-e2e-{}", std::process::id()));
        let cluster = Cluster { run_dir };
        // A cluster a crashed earlier run left behind would block this one.
        let _ = cluster.tagger(&["cluster", "down"]);
        let out = cluster.tagger(&["cluster", "up", cluster_file(file).to_str().unwrap()]);
        assert!(
            out.status.success(),
            "cluster up failed:\n{}",
            text(&out.stderr)
        );
        cluster
    }

    /// `--run-dir DIR` for a tagger command run by hand (e.g. spawned).
    pub fn run_dir_args(&self) -> [&std::ffi::OsStr; 2] {
        ["--run-dir".as_ref(), self.run_dir.as_os_str()]
    }

    pub fn tagger(&self, args: &[&str]) -> Output {
        Command::new(tagger_bin())
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args)
            .output()
            .expect("running tagger")
    }

    /// Runs a command in a pod; returns its output (any exit status).
    pub fn exec(&self, pod: &str, command: &[&str]) -> Output {
        let mut args = vec!["cluster", "exec", pod, "--"];
        args.extend_from_slice(command);
        self.tagger(&args)
    }

    /// `curl` inside a pod; returns the body, panicking on failure.
    pub fn curl(&self, pod: &str, url: &str, headers: &[&str]) -> String {
        let mut command = vec!["curl", "-sS", "--fail-with-body", "-m", "10"];
        for h in headers {
            command.extend_from_slice(&["-H", h]);
        }
        command.push(url);
        let out = self.exec(pod, &command);
        assert!(
            out.status.success(),
            "curl {url} from {pod} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// The same from the node (outside every pod): how a request "enters" a
    /// given pod, as an ingress would send it.
    pub fn curl_from_node(&self, url: &str, headers: &[&str]) -> String {
        let mut command = Command::new("curl");
        command.args(["-sS", "--fail-with-body", "-m", "10"]);
        for h in headers {
            command.args(["-H", h]);
        }
        let out = command.arg(url).output().expect("running curl");
        assert!(
            out.status.success(),
            "curl {url} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn record(&self) -> Value {
        let path = self.run_dir.join("cluster.json");
        serde_json::from_str(&std::fs::read_to_string(&path).expect("cluster record"))
            .expect("record JSON")
    }

    pub fn pod_ip(&self, pod: &str) -> String {
        self.record()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .unwrap_or_else(|| panic!("no pod {pod}"))["ip"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn daemon_pid(&self) -> i32 {
        self.record()["daemon_pid"].as_i64().expect("daemon pid") as i32
    }

    /// `tagger flows --json`.
    pub fn flows(&self) -> Vec<Value> {
        let out = self.tagger(&["flows", "--json"]);
        assert!(
            out.status.success(),
            "tagger flows failed: {}",
            text(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("flows JSON")
            .as_array()
            .unwrap()
            .clone()
    }

    /// The flow from `source` to `service` served by `endpoint`.
    pub fn flow(&self, source: &str, service: &str, endpoint: &str) -> Value {
        let flows = self.flows();
        flows
            .iter()
            .find(|f| f["source"] == source && f["service"] == service && f["endpoint"] == endpoint)
            .cloned()
            .unwrap_or_else(|| panic!("no flow {source} -> {service} ({endpoint}) in {flows:#?}"))
    }

    pub fn config_dump(&self) -> Value {
        let out = self.tagger(&["config-dump"]);
        assert!(
            out.status.success(),
            "config-dump failed: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("config dump JSON")
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.run_dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.tagger(&["cluster", "down"]);
        if !out.status.success() {
            eprintln!("cluster down reported problems: {}", text(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Unix time in seconds, the clock `steady.py` stamps its lines with.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One request of a steady load: when it ended, its status (0 for a
/// transport error) and its body.
pub struct Answer {
    pub at: f64,
    pub status: u16,
    pub body: String,
}

/// A steady load (tests/apps/steady.py) running in a pod.
pub struct SteadyLoad(Child);

impl Cluster {
    /// Starts `steady.py URL SECS HEADERS...` in `pod`, in the background.
    pub fn steady_load(&self, pod: &str, url: &str, secs: u32, headers: &[&str]) -> SteadyLoad {
        let child = Command::new(tagger_bin())
            .args(self.run_dir_args())
            .args(["cluster", "exec", pod, "--", "python3"])
            .arg(workspace().join("tests/apps/steady.py"))
            .arg(url)
            .arg(secs.to_string())
            .args(headers)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the steady load");
        SteadyLoad(child)
    }
}

impl SteadyLoad {
    /// Waits for the load to end; returns every answer in order.
    pub fn answers(self) -> Vec<Answer> {
        let output = self.0.wait_with_output().expect("steady load");
        let answers: Vec<Answer> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let mut parts = line.splitn(3, ' ');
                Answer {
                    at: parts.next().unwrap().parse().unwrap(),
                    status: parts.next().unwrap().parse().unwrap(),
                    body: parts.next().unwrap_or("").to_string(),
                }
            })
            .collect();
        assert!(
            !answers.is_empty(),
            "the steady load answered nothing: {}",
            text(&output.stderr)
        );
        answers
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

/// Retries `check` until it returns `Some` or `limit` passes.
pub fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the local cluster leaves on the host, to check that `down` (and a
/// failed `up`) removed it all.
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
            .map(str::to_string),
    );
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    left.extend(
        text(&links.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n == "tagger0" || n.starts_with("tv-") || n.starts_with("tp-")),
    );
    for root in ["/sys/fs/cgroup/unified/tagger", "/sys/fs/cgroup/tagger"] {
        if Path::new(root).exists() {
            left.push(root.to_string());
        }
    }
    left
}

//! Harness for the privileged end-to-end tests: a local cluster started with
//! the real `tagger` binary, commands run inside its pods, and the daemon's
//! flow map read back through the CLI.
//!
//! These tests need root. Without it they fail (never skip): `cargo xtask
//! test` is the way to run them.
pub mod chains;
pub mod goapps;
mod host;
pub mod kube_nodes;
mod load;
mod shared;
mod watchdog;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

pub use host::{host_leftovers, preclean, settled_leftovers};
pub use load::{Answer, SteadyLoad};
pub use shared::{SharedCluster, release as release_shared, shared};
use watchdog::Watchdog;

/// How long one test's own cluster may live before the watchdog takes it
/// down and ends the test binary, naming the cluster: nothing hangs.
pub const CLUSTER_LIMIT: Duration = Duration::from_secs(300);

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

/// A running local cluster, removed on drop (also when a test panics), and
/// checked to have left nothing on the host.
pub struct Cluster {
    run_dir: PathBuf,
    file: String,
    _watchdog: Watchdog,
}

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
static PRECLEAN: std::sync::Once = std::sync::Once::new();

impl Cluster {
    /// Starts the cluster of `file` (a name in tests/clusters, or a path)
    /// for this test alone. A shared cluster of this test binary is taken
    /// down first: one local cluster runs at a time.
    pub fn up(file: &str) -> Self {
        shared::release();
        Self::start(file, CLUSTER_LIMIT)
    }

    fn start(file: &str, limit: Duration) -> Self {
        require_root();
        PRECLEAN.call_once(preclean);
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let run_dir = std::env::temp_dir().join(format!(
            "{}{}-{n}",
            host::RUN_DIR_PREFIX,
            std::process::id()
        ));
        let watchdog = Watchdog::start(file, &run_dir, limit);
        let cluster = Cluster {
            run_dir,
            file: file.to_string(),
            _watchdog: watchdog,
        };
        goapps::prepare(&cluster_file(file));
        let out = cluster.tagger(&["cluster", "up", cluster_file(file).to_str().unwrap()]);
        assert!(
            out.status.success(),
            "cluster up {file} failed:\n{}",
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
        let _ = std::fs::remove_dir_all(&self.run_dir);
        if std::thread::panicking() {
            return;
        }
        assert!(
            out.status.success(),
            "cluster down {} reported problems: {}",
            self.file,
            text(&out.stderr)
        );
        let left = host::settled_leftovers();
        assert!(
            left.is_empty(),
            "cluster {} left this on the host: {left:?}; tagger processes: {}",
            self.file,
            text(
                &Command::new("pgrep")
                    .args(["-a", "tagger"])
                    .output()
                    .map(|o| o.stdout)
                    .unwrap_or_default()
            )
        );
    }
}

/// A directory of the test's own in the temp dir, removed when dropped,
/// also when the test fails.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("tagger-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("creating a test directory");
        TestDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unix time in seconds, the clock `steady.py` stamps its lines with.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The fields that tell flows apart (everything but the counts and age).
const FLOW_KEY: [&str; 9] = [
    "source",
    "service",
    "endpoint",
    "lane",
    "reason",
    "fallback",
    "served_lane",
    "correlation",
    // gRPC rows are per method too.
    "rpc",
];

/// The flows of what happened between two reads of `flows()` (the flow map
/// of a shared cluster keeps earlier tests' requests): each row with the
/// requests, errors and stripped lane headers it gained; rows that gained
/// no request are left out.
pub fn flow_delta(before: &[Value], after: &[Value]) -> Vec<Value> {
    let same = |a: &Value, b: &Value| FLOW_KEY.iter().all(|k| a[k] == b[k]);
    after
        .iter()
        .filter_map(|row| {
            let old = before.iter().find(|b| same(b, row));
            let gained = |field: &str| {
                row[field].as_u64().unwrap_or(0) - old.map_or(0, |o| o[field].as_u64().unwrap_or(0))
            };
            let requests = gained("requests");
            (requests > 0).then(|| {
                let mut row = row.clone();
                row["requests"] = requests.into();
                row["errors"] = gained("errors").into();
                row["stripped"] = gained("stripped").into();
                row
            })
        })
        .collect()
}

/// Requests counted in the flows that satisfy `keep`.
pub fn requests_where(flows: &[Value], keep: impl Fn(&Value) -> bool) -> u64 {
    flows
        .iter()
        .filter(|f| keep(f))
        .map(|f| f["requests"].as_u64().unwrap())
        .sum()
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

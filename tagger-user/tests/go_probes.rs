//! Spike, privileged: do the Go uprobes tie each outbound request of a real
//! net/http program to the inbound request that caused it?
//!
//! A Go front server A calls a Go backend B through one shared http.Client
//! (keep-alive pool), directly or from two `go func`s (fan-out). Every
//! client request carries a distinct id that A forwards in the path. From
//! the probes' events alone, each backend call's written bytes (the truth:
//! the id) are compared with the attribution the probes give: the write's
//! fd -> the `(*persistConn).roundTrip` on that fd -> its goroutine -> the
//! handler (`serverHandler.ServeHTTP`) it is, or descends from
//! (`newproc1`) -> that handler's inbound fd -> the id read there.
//!
//! Runs as root with `cargo test -p tagger-user --test go_probes`; fails
//! (does not skip) without root or without `go`. Loopback only. Prints the
//! counts, ns per program hit (bpf stats) and A's throughput with and
//! without the probes.
use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tagger::golang::{
    self,
    probe::{GoProbes, Scope},
};
use tagger_common::golang::{
    GO_EXIT, GO_NEWPROC, GO_READ, GO_ROUND_TRIP, GO_ROUND_TRIP_DONE, GO_SERVE, GO_SERVE_DONE,
    GO_WRITE, GoEvent,
};

const APP: &str = include_str!("go_probes/app.go");
const REQUESTS: u64 = 200;
const CONCURRENCY: usize = 16;
const LOAD_SECS: u64 = 3;

#[test]
fn go_probes_attribute_backend_calls_to_their_handler() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "this test loads eBPF programs and uprobes: run it as root"
    );
    let dir = TempDir::new();
    let builds = [("default", None), ("stripped", Some("-ldflags=-s -w"))];
    let _stats = BpfStats::enable();
    let mut failures = Vec::new();
    for (name, flags) in builds {
        let exe = build_app(&dir.0, name, flags);
        let report = run_build(name, &exe);
        eprintln!("{report}");
        if report.counts.misattributed != 0 {
            failures.push(format!(
                "{name}: {} misattributed",
                report.counts.misattributed
            ));
        }
        if report.counts.correct != report.counts.backend_calls {
            failures.push(format!(
                "{name}: {} of {} backend calls attributed",
                report.counts.correct, report.counts.backend_calls
            ));
        }
        if report.client_failures != 0 {
            failures.push(format!(
                "{name}: {} client failures",
                report.client_failures
            ));
        }
        if report.foreign_events != 0 {
            failures.push(format!(
                "{name}: {} events from other processes",
                report.foreign_events
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

struct Report {
    build: &'static str,
    version: String,
    offset_source: String,
    attached: usize,
    counts: Counts,
    client_failures: usize,
    foreign_events: usize,
    threads: usize,
    stats: Vec<(String, u64, u64)>,
    loads: Vec<(&'static str, Load, u64)>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "== build {} ({}, offsets from {}): {} uprobes attached to A",
            self.build, self.version, self.offset_source, self.attached
        )?;
        writeln!(f, "{:#?}", self.counts)?;
        writeln!(
            f,
            "client failures {}, events from other processes {}, A threads seen {}",
            self.client_failures, self.foreign_events, self.threads
        )?;
        writeln!(
            f,
            "bpf stats (uprobes + events, no wakeup): program hits ns/hit"
        )?;
        for (name, count, ns) in &self.stats {
            let per = if *count > 0 { ns / count } else { 0 };
            writeln!(f, "  {name:28} {count:>9} {per:>6}")?;
        }
        writeln!(
            f,
            "A under load (concurrency {CONCURRENCY}, {LOAD_SECS} s each, 1/3 fan-out):"
        )?;
        for (title, load, hits) in &self.loads {
            let per_req = if load.requests > 0 {
                *hits as f64 / load.requests as f64
            } else {
                0.0
            };
            writeln!(
                f,
                "  {title:34} {:>7.0} req/s  A cpu {:>6.1} us/req  uprobe hits/req {per_req:.2}",
                load.rps, load.cpu_us_per_request
            )?;
        }
        Ok(())
    }
}

fn run_build(build: &'static str, exe: &Path) -> Report {
    let backend = Proc::spawn(exe, &["backend"]);
    let front = Proc::spawn(exe, &["front", &format!("127.0.0.1:{}", backend.port)]);
    let pid = front.pid();
    let binary = golang::inspect(exe).expect("inspect the Go binary");

    // Correctness first, on a cold connection pool (its dials are seen).
    let mut probes = GoProbes::load().expect("load the Go programs (verifier)");
    probes
        .trace_sockets()
        .expect("attach the socket tracepoints");
    let attached = probes
        .attach(pid, exe, &binary, Scope::Process)
        .expect("attach the uprobes");
    let ring = probes.take_events().expect("the event ring");
    let drain = Drain::start(ring, true);
    let ids: Vec<u64> = (1..=REQUESTS).collect();
    let client_failures = drive_ids(front.port, &ids);
    thread::sleep(Duration::from_millis(300));
    let (events, ring) = drain.stop();
    let foreign_events = events
        .iter()
        .filter(|e| (e.pid_tgid >> 32) as u32 != pid)
        .count();
    let threads = events
        .iter()
        .map(|e| e.pid_tgid as u32)
        .collect::<HashSet<_>>()
        .len();
    let mut counts = analyze(&events, pid);
    counts.requests = REQUESTS;
    counts.backend_calls = ids.iter().map(|&id| if fan(id) { 2 } else { 1 }).sum();
    let mut loads = Vec::new();
    let before = uprobe_hits(&probes);
    let drain = Drain::start(ring, false);
    let load = throughput(pid, front.port, 2_000_000);
    drain.stop();
    loads.push((
        "uprobes + socket tracepoints",
        load,
        uprobe_hits(&probes) - before,
    ));
    drop(probes);

    loads.push(("no probes", throughput(pid, front.port, 1_000_000), 0));

    let mut stats = Vec::new();
    for (title, mute) in [
        ("uprobes, programs return at once", true),
        ("uprobes + events", false),
    ] {
        let mut probes = GoProbes::load().expect("load the Go programs");
        probes
            .attach(pid, exe, &binary, Scope::Process)
            .expect("attach the uprobes");
        if mute {
            probes.mute(pid);
        }
        let drain = Drain::start(probes.take_events().expect("the event ring"), false);
        let load = throughput(pid, front.port, 3_000_000);
        drain.stop();
        loads.push((title, load, uprobe_hits(&probes)));
        if !mute {
            stats = stats_of(&probes);
        }
    }
    loads.push(("no probes again", throughput(pid, front.port, 4_000_000), 0));
    Report {
        build,
        version: binary.build.version.clone(),
        offset_source: format!("{:?}", binary.offsets.source),
        attached,
        counts,
        client_failures,
        foreign_events,
        threads,
        stats,
        loads,
    }
}

/// Hits of the uprobe programs so far.
fn uprobe_hits(probes: &GoProbes) -> u64 {
    probes
        .program_stats()
        .iter()
        .filter(|s| !s.name.contains("sock") && !s.name.contains("tcp"))
        .map(|s| s.run_count)
        .sum()
}

fn stats_of(probes: &GoProbes) -> Vec<(String, u64, u64)> {
    probes
        .program_stats()
        .into_iter()
        .filter(|s| s.run_count > 0)
        .map(|s| (s.name, s.run_count, s.run_time_ns))
        .collect()
}

fn fan(id: u64) -> bool {
    id.is_multiple_of(3)
}

/// What the events say about the backend calls.
#[derive(Debug, Default)]
struct Counts {
    requests: u64,
    backend_calls: u64,
    /// `serverHandler.ServeHTTP` entries, and those whose inbound fd had an
    /// id read on it.
    serves: u64,
    serves_with_id: u64,
    /// The handler goroutine read the request itself (syscall R14).
    serves_read_by_same_goroutine: u64,
    serves_done: u64,
    round_trips: u64,
    round_trips_done: u64,
    newprocs: u64,
    goexits: u64,
    /// Outbound request writes (`GET /back?id=N...`): the truth.
    writes: u64,
    /// Attribution through write fd -> roundTrip -> goroutine -> handler.
    correct: u64,
    correct_on_handler_goroutine: u64,
    correct_on_child_goroutine: u64,
    misattributed: u64,
    missing_no_round_trip_on_fd: u64,
    missing_no_context: u64,
    /// roundTrips whose fd no request write used.
    round_trips_unmatched: u64,
    /// The write was made by the roundTrip's own goroutine (else: writeLoop).
    writes_on_round_trip_goroutine: u64,
    /// The alternative design (the writing goroutine's inherited context):
    /// how it would fare.
    writer_context_correct: u64,
    writer_context_wrong: u64,
    writer_context_none: u64,
}

/// The number after `key` in `bytes`.
fn id_after(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let at = bytes.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = bytes[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn analyze(events: &[GoEvent], pid: u32) -> Counts {
    let mut events: Vec<&GoEvent> = events
        .iter()
        .filter(|e| (e.pid_tgid >> 32) as u32 == pid)
        .collect();
    events.sort_by_key(|e| e.ts_ns);
    let mut c = Counts::default();
    // Inbound fd -> (id of the request last read on it, reading goroutine).
    let mut inbound: HashMap<i32, (u64, u64)> = HashMap::new();
    // goroutine -> (id, is the handler goroutine itself).
    let mut context: HashMap<u64, (u64, bool)> = HashMap::new();
    // Outbound fd -> (attributed id, on the handler goroutine, roundTrip goid).
    let mut pending: HashMap<i32, (Option<(u64, bool)>, u64)> = HashMap::new();
    for e in events {
        let data = &e.data[..e.len as usize];
        match e.kind {
            GO_READ => {
                if let Some(id) = id_after(data, b"/front?id=") {
                    inbound.insert(e.fd, (id, e.goid));
                }
            }
            GO_SERVE => {
                c.serves += 1;
                if let Some(&(id, reader)) = inbound.get(&e.fd) {
                    c.serves_with_id += 1;
                    if reader == e.goid {
                        c.serves_read_by_same_goroutine += 1;
                    }
                    context.insert(e.goid, (id, true));
                }
            }
            GO_SERVE_DONE => {
                c.serves_done += 1;
                context.remove(&e.goid);
            }
            GO_NEWPROC => {
                c.newprocs += 1;
                if let Some(&(id, _)) = context.get(&e.goid) {
                    context.insert(e.aux, (id, false));
                }
            }
            GO_EXIT => {
                c.goexits += 1;
                context.remove(&e.goid);
            }
            GO_ROUND_TRIP => {
                c.round_trips += 1;
                let attributed = context.get(&e.goid).copied();
                if pending.insert(e.fd, (attributed, e.goid)).is_some() {
                    c.round_trips_unmatched += 1;
                }
            }
            GO_ROUND_TRIP_DONE => c.round_trips_done += 1,
            GO_WRITE => {
                if !data.starts_with(b"GET /back?") {
                    continue;
                }
                let Some(truth) = id_after(data, b"id=") else {
                    continue;
                };
                c.writes += 1;
                match context.get(&e.goid) {
                    Some(&(id, _)) if id == truth => c.writer_context_correct += 1,
                    Some(_) => c.writer_context_wrong += 1,
                    None => c.writer_context_none += 1,
                }
                match pending.remove(&e.fd) {
                    None => c.missing_no_round_trip_on_fd += 1,
                    Some((None, _)) => c.missing_no_context += 1,
                    Some((Some((id, direct)), rt_goid)) => {
                        if rt_goid == e.goid {
                            c.writes_on_round_trip_goroutine += 1;
                        }
                        if id == truth {
                            c.correct += 1;
                            if direct {
                                c.correct_on_handler_goroutine += 1;
                            } else {
                                c.correct_on_child_goroutine += 1;
                            }
                        } else {
                            c.misattributed += 1;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    c.round_trips_unmatched += pending.len() as u64;
    c
}

/// Reads the Go events on a thread until stopped.
struct Drain {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(Vec<GoEvent>, Ring)>,
}

type Ring = aya::maps::RingBuf<aya::maps::MapData>;

impl Drain {
    fn start(mut ring: Ring, keep: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut events = Vec::new();
            loop {
                let stopping = flag.load(Ordering::Relaxed);
                let mut got = 0;
                while let Some(item) = ring.next() {
                    got += 1;
                    if keep && item.len() >= size_of::<GoEvent>() {
                        // SAFETY: the kernel wrote a whole GoEvent (POD).
                        events.push(unsafe { item.as_ptr().cast::<GoEvent>().read_unaligned() });
                    }
                }
                if stopping {
                    return (events, ring);
                }
                if got == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Drain { stop, thread }
    }

    fn stop(self) -> (Vec<GoEvent>, Ring) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("drain thread")
    }
}

/// Sends `GET /front?id=N[&fan=1]` on a keep-alive connection; true when
/// the answer is `ok N` with status 200.
fn request(stream: &mut TcpStream, id: u64) -> bool {
    let fan = if fan(id) { "&fan=1" } else { "" };
    let req = format!("GET /front?id={id}{fan} HTTP/1.1\r\nHost: front\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return false;
    };
    while buf.len() < head_end + len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    head.starts_with("http/1.1 200")
        && buf[head_end..head_end + len] == *format!("ok {id}").as_bytes()
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to A");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Each id once, CONCURRENCY at a time; returns the failures.
fn drive_ids(port: u16, ids: &[u64]) -> usize {
    let next = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..CONCURRENCY {
            s.spawn(|| {
                let mut stream = connect(port);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&id) = ids.get(i) else { break };
                    if !request(&mut stream, id) {
                        failures.fetch_add(1, Ordering::Relaxed);
                        stream = connect(port);
                    }
                }
            });
        }
    });
    failures.into_inner()
}

struct Load {
    rps: f64,
    requests: u64,
    /// A's CPU time (user + system, which includes uprobe handling) per
    /// request.
    cpu_us_per_request: f64,
}

/// utime + stime of process `pid`, in microseconds.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 of stat(5); after the comm, indices 11 and 12.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 * 1e6 / hz
}

/// A's throughput for LOAD_SECS (ids from `first_id` up).
fn throughput(pid: u32, port: u16, first_id: u64) -> Load {
    let next = AtomicU64::new(first_id);
    let done = AtomicU64::new(0);
    let cpu_before = cpu_us(pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(LOAD_SECS);
    thread::scope(|s| {
        for _ in 0..CONCURRENCY {
            s.spawn(|| {
                let mut stream = connect(port);
                while Instant::now() < deadline {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if request(&mut stream, id) {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stream = connect(port);
                    }
                }
            });
        }
    });
    let requests = done.into_inner();
    let cpu = cpu_us(pid) - cpu_before;
    Load {
        rps: requests as f64 / start.elapsed().as_secs_f64(),
        requests,
        cpu_us_per_request: cpu / requests.max(1) as f64,
    }
}

fn build_app(dir: &Path, name: &str, flags: Option<&str>) -> PathBuf {
    let version = Command::new("go").arg("version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "`go` is not on PATH: this test builds a Go program with Debian's golang-go (Go 1.19)"
    );
    let src = dir.join("app.go");
    std::fs::write(&src, APP).unwrap();
    let exe = dir.join(format!("app-{name}"));
    let mut go = Command::new("go");
    go.current_dir(dir)
        .args(["build", "-o"])
        .arg(&exe)
        .args(flags)
        .arg(&src)
        .env("GOPATH", dir.join("gopath"))
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "")
        .env("GOENV", "off")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GO111MODULE", "off");
    let out = go.output().expect("run go build");
    assert!(
        out.status.success(),
        "go build {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// A child process killed (and reaped) on drop; its first stdout line is
/// its port.
struct Proc {
    child: Child,
    port: u16,
}

impl Proc {
    fn spawn(exe: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Go app");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the Go app printed {line:?}, not its port")
        });
        Proc { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tagger-go-probes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `kernel.bpf_stats_enabled` on for the test, restored after; plus a
/// BPF_ENABLE_STATS fd, which keeps stats counted even if another process
/// on the machine turns the sysctl off meanwhile.
struct BpfStats {
    before: String,
    /// Held, not read: stats stay on while it is open.
    _enabled: std::os::fd::OwnedFd,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Self {
        let before = std::fs::read_to_string(BPF_STATS).expect("read bpf_stats_enabled");
        std::fs::write(BPF_STATS, "1").expect("enable bpf stats");
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        BpfStats {
            before: before.trim().to_string(),
            _enabled: fd,
        }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.before);
    }
}

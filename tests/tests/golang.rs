//! Lanes through unmodified Go apps (SPEC section D's Go rows): net/http
//! servers whose handlers call the next hop through one shared
//! `http.Client` (pooled keep-alive connections, each request written by
//! the connection's `writeLoop` goroutine), copying no header. Built from
//! tests/apps/go with Debian's Go, as `go build` makes it and with
//! `-ldflags='-s -w'`; one shared cluster (tests/clusters/go.yaml) whose
//! chains enter at a baseline pod with a non-sticky lane, so every gray
//! answer past the entry was carried through goroutines by tagger.
use std::time::Duration;

use serde_json::Value;
use tagger_e2e::{
    chains::{
        Runtime, b2_lane_header, b3_per_hop_rule, b4_fallback_and_return, burst_is_exact, entry,
    },
    eventually, flow_delta, requests_where, shared, text, workspace,
};

const GO: &str = "go.yaml";

#[test]
fn go_b2() {
    b2_lane_header(Runtime::Go);
}

#[test]
fn go_b3() {
    b3_per_hop_rule(Runtime::Go);
}

#[test]
fn go_b4() {
    b4_fallback_and_return(Runtime::Go);
}

/// 2000 requests at concurrency 32, half gray: 0 wrong, every hop decision
/// trusted, every gray one inherited by a goroutine.
#[test]
fn go_lane_correctness_burst() {
    burst_is_exact(Runtime::Go);
}

/// The same with binaries without symbols or DWARF (offsets from the
/// version table), c's gray pod exec'd by a shell (classified again at
/// exec).
#[test]
fn go_stripped_b2_and_burst() {
    b2_lane_header(Runtime::GoStripped);
    burst_is_exact(Runtime::GoStripped);
}

/// The daemon found every Go process from its executable and says how it
/// probed it: the stripped build from the version table, the one with an
/// unknown version not at all (and why).
#[test]
fn go_processes_are_probed_from_their_binaries() {
    let cluster = shared(GO);
    // Classification runs at exec and at the first request: make sure each
    // pod has served one.
    for pod in ["go-a-base", "gos-a-base", "gou-a-base"] {
        cluster.curl_from_node(&format!("http://{}:8080/", cluster.pod_ip(pod)), &[]);
    }
    let dump = cluster.config_dump();
    let go = dump["processes"]["go"].as_array().unwrap().clone();
    let by_exe = |name: &str| -> Vec<&Value> {
        go.iter()
            .filter(|p| p["exe"].as_str().unwrap().ends_with(&format!("/{name}")))
            .collect()
    };
    // go.yaml: 5 pods of hop-go (cgo), 1 of hop-go-static, 5 of
    // hop-go-stripped, 1 of hop-go-unknown.
    let (plain, stripped, unknown) = (
        [by_exe("hop-go"), by_exe("hop-go-static")].concat(),
        by_exe("hop-go-stripped"),
        by_exe("hop-go-unknown"),
    );
    assert_eq!(
        (plain.len(), stripped.len(), unknown.len()),
        (6, 5, 1),
        "{go:#?}"
    );
    for p in &plain {
        assert_eq!((&p["kind"], &p["offsets"]), (&"go".into(), &"dwarf".into()));
        // roundTrip's entry and each of newproc1's RETs.
        assert!(p["uprobes"].as_u64().is_some_and(|n| n >= 2), "{p}");
    }
    for p in &stripped {
        assert_eq!(
            (&p["kind"], &p["offsets"]),
            (&"go".into(), &"version-table".into())
        );
    }
    assert_eq!(unknown[0]["kind"], "go-unprobed");
    let reason = unknown[0]["reason"].as_str().unwrap();
    assert!(reason.contains("1.99"), "{reason}");
}

/// A handler that starts two goroutines calling two services at once:
/// both calls, and the call the second service makes, carry the lane. 2000
/// requests, half gray, 3 hop decisions each, all trusted. (A static
/// build: CGO_ENABLED=0.)
#[test]
fn go_fan_out_goroutines_inherit_the_lane() {
    let cluster = shared(GO);
    let before = cluster.flows();
    let load = workspace().join("tests/apps/load.py");
    let out = cluster.exec(
        "client",
        &[
            "python3",
            load.to_str().unwrap(),
            "http://gof-a:8080/",
            "2000",
            "32",
            "x-request-id",
        ],
    );
    assert!(out.status.success(), "load failed: {}", text(&out.stderr));
    let mut wrong = Vec::new();
    for line in text(&out.stdout).lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let i = row["i"].as_u64().unwrap();
        let l = if row["gray"].as_bool().unwrap() {
            "gray"
        } else {
            "base"
        };
        let expected = format!("gof-a-base -> [go-b-{l} -> go-c-{l}(m={i}) | go-c-{l}(m={i})]");
        if row["answer"] != expected.as_str() {
            wrong.push(format!("{}: expected {expected}", row["answer"]));
        }
    }
    let hops: Vec<Value> = flow_delta(&before, &cluster.flows())
        .into_iter()
        .filter(|f| f["source"] != "client")
        .collect();
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}\n{hops:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(requests_where(&hops, |_| true), 6000, "{hops:#?}");
    assert_eq!(
        requests_where(&hops, |f| f["correlation"] == "trusted"),
        6000,
        "{hops:#?}"
    );
    assert_eq!(
        requests_where(&hops, |f| f["lane"] == "gray"
            && f["reason"] == "inherited-goroutine"),
        3000,
        "{hops:#?}"
    );
}

/// A goroutine the handler starts that calls out after the answer was
/// sent (it outlives its request) inherits nothing: its call is untrusted
/// and baseline, while the handler's own call in the same request is gray.
#[test]
fn go_a_goroutine_outliving_its_request_inherits_nothing() {
    let cluster = shared(GO);
    let url = format!("http://{}:8080/?late=1", cluster.pod_ip("go-a-base"));
    let late_calls = |flows: &[Value]| {
        requests_where(flows, |f| {
            f["source"] == "go-a-base" && f["service"] == "go-c"
        })
    };
    let before = cluster.flows();
    for _ in 0..5 {
        assert_eq!(
            cluster.curl_from_node(&url, &["x-lane: gray"]),
            "go-a-base -> go-b-gray -> go-c-gray(late=1)"
        );
    }
    // The late calls come 50 ms after each answer.
    let settled = eventually(Duration::from_secs(5), || {
        let flows = flow_delta(&before, &cluster.flows());
        (late_calls(&flows) == 5).then_some(flows)
    });
    let flows = settled.expect("5 late calls from go-a-base to go-c");
    let late = requests_where(&flows, |f| {
        f["source"] == "go-a-base"
            && f["service"] == "go-c"
            && f["correlation"] == "untrusted"
            && f["lane"] == Value::Null
            && f["endpoint"] == "go-c-base"
    });
    assert_eq!(late, 5, "{flows:#?}");
}

/// A Go binary tagger cannot probe (a version without offsets, no DWARF)
/// is left alone: its calls are untrusted and take the safe default, never
/// a lane guessed from a thread.
#[test]
fn go_an_unprobeable_binary_is_untrusted_and_safe() {
    let cluster = shared(GO);
    let before = cluster.flows();
    let url = format!("http://{}:8080/", cluster.pod_ip("gou-a-base"));
    for _ in 0..5 {
        assert_eq!(
            cluster.curl_from_node(&url, &["x-lane: gray"]),
            "gou-a-base -> go-c-base()"
        );
    }
    let flows = flow_delta(&before, &cluster.flows());
    let row = flows
        .iter()
        .find(|f| f["source"] == "gou-a-base")
        .unwrap_or_else(|| panic!("{flows:#?}"));
    assert_eq!(
        (
            row["correlation"].as_str(),
            &row["lane"],
            row["requests"].as_u64()
        ),
        (Some("untrusted"), &Value::Null, Some(5)),
        "{row}"
    );
}

/// Go apps started before the daemon (a restart: new process, programs
/// and maps) are found and probed again before redirection resumes.
#[test]
fn go_apps_running_before_the_daemon_are_probed() {
    {
        // Stopped, so that the new daemon starts on its own (with a live
        // daemon it would take over: tests/tests/upgrade.rs).
        let cluster = shared(GO);
        let pid = cluster.daemon_pid();
        // SAFETY: kill(2) on the daemon of this test's cluster.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        tagger_e2e::eventually(std::time::Duration::from_secs(15), || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        })
        .expect("the daemon stopped");
        let out = cluster.tagger(&["cluster", "restart-daemon"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    b2_lane_header(Runtime::Go);
    b2_lane_header(Runtime::GoStripped);
    let cluster = shared(GO);
    assert_eq!(
        entry(&cluster, Runtime::Go, &["x-user-id: 100"]),
        Runtime::Go.chain("gray", "base", "")
    );
}

/// Two requests pipelined in one write reach the server in one read: the
/// kernel sees the start of the first only. The second one's handler runs
/// on the same goroutine after the first was answered, so what it inherits
/// is over: its call is untrusted, never in the first request's lane.
#[test]
fn go_a_pipelined_request_never_inherits_the_previous_ones_lane() {
    use std::io::{Read, Write};
    let cluster = shared(GO);
    let before = cluster.flows();
    let addr = format!("{}:8080", cluster.pod_ip("go-a-base"));
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"GET /?p=1 HTTP/1.1\r\nHost: a\r\nx-lane: gray\r\n\r\n\
              GET /?p=2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut answers = String::new();
    stream.read_to_string(&mut answers).unwrap();
    let first = answers
        .find("go-a-base -> go-b-gray -> go-c-gray(p=1)")
        .unwrap_or_else(|| panic!("first answer not gray: {answers}"));
    let second = answers
        .find("go-a-base -> go-b-base -> go-c-base(p=2)")
        .unwrap_or_else(|| panic!("second answer not baseline: {answers}"));
    assert!(first < second, "{answers}");
    let flows = flow_delta(&before, &cluster.flows());
    let gray = requests_where(&flows, |f| {
        f["source"] == "go-a-base" && f["lane"] == "gray"
    });
    assert_eq!(gray, 1, "{flows:#?}");
}

/// The Go uprobes attached on the host, as the kernel lists them: bpf links
/// of type perf_event whose program is one of tagger's Go programs.
fn go_uprobes() -> usize {
    let bpftool = |what: &str| -> Vec<Value> {
        let out = std::process::Command::new("bpftool")
            .args(["-j", what, "list"])
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    // Program names are cut to 15 bytes by the kernel.
    let go_programs: Vec<Value> = bpftool("prog")
        .into_iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("tagger_go_"))
        })
        .map(|p| p["id"].clone())
        .collect();
    bpftool("link")
        .iter()
        .filter(|l| l["type"] == "perf_event" && go_programs.contains(&l["prog_id"]))
        .count()
}

/// A Go process that exits loses its uprobes at once (the kernel tells the
/// daemon); the one that replaces it is probed when it starts.
#[test]
fn go_uprobes_follow_processes_that_exit_and_start() {
    let cluster = shared(GO);
    let go_rows = || {
        cluster.config_dump()["processes"]["go"]
            .as_array()
            .unwrap()
            .len()
    };
    let (rows, uprobes) = (go_rows(), go_uprobes());
    assert!(
        uprobes >= 2 * 11,
        "11 probed Go processes, {uprobes} uprobes"
    );
    let out = cluster.tagger(&["cluster", "stop-pod", "go-c-gray"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Its links are closed off the daemon's classifying thread (each close
    // waits for a kernel grace period): gone soon, not at once.
    let gone = eventually(Duration::from_secs(5), || {
        (go_rows() == rows - 1 && go_uprobes() == uprobes - uprobes / 11).then_some(())
    });
    assert!(
        gone.is_some(),
        "the stopped process is forgotten and its uprobes detached: {} rows, {} of {uprobes} uprobes left",
        go_rows(),
        go_uprobes()
    );
    let restart = cluster.tagger(&["cluster", "start-pod", "go-c-gray"]);
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    let back = eventually(Duration::from_secs(5), || {
        (go_rows() == rows && go_uprobes() == uprobes).then_some(())
    });
    assert!(back.is_some(), "the new process is probed");
    // And it serves in its lane, inheriting as before.
    let settled = eventually(Duration::from_secs(10), || {
        (entry(&cluster, Runtime::Go, &["x-lane: gray"]) == Runtime::Go.chain("gray", "gray", ""))
            .then_some(())
    });
    assert!(settled.is_some());
}

/// net/http's server keeps a 1-byte read pending while a handler runs:
/// the next request on a keep-alive connection can reach it in two reads,
/// its first byte alone. Each of those requests is still its own, in its
/// own lane (the soak found this: a proxy's pool sends the next request at
/// once). Here the first byte is sent alone on purpose.
#[test]
fn go_a_request_whose_first_byte_is_read_alone_keeps_its_lane() {
    use std::io::{Read, Write};
    let cluster = shared(GO);
    let addr = format!("{}:8080", cluster.pod_ip("go-a-base"));
    for (lane, expected) in [
        (
            "x-lane: gray\r\n",
            "go-a-base -> go-b-gray -> go-c-gray(p=2)",
        ),
        ("", "go-a-base -> go-b-base -> go-c-base(p=2)"),
    ] {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The first request in the other lane: nothing of it may stick.
        let other = if lane.is_empty() {
            "x-lane: gray\r\n"
        } else {
            ""
        };
        write!(stream, "GET /?p=1 HTTP/1.1\r\nHost: a\r\n{other}\r\n").unwrap();
        let mut first = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&first).contains("(p=1)") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&first));
            first.extend_from_slice(&buf[..n]);
        }
        stream.write_all(b"G").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        write!(
            stream,
            "ET /?p=2 HTTP/1.1\r\nHost: a\r\n{lane}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut second = String::new();
        stream.read_to_string(&mut second).unwrap();
        assert!(second.contains(expected), "{lane:?}: {second}");
    }
}

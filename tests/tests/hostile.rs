//! Slow and greedy clients against the live daemon (SPEC G): one pod opens
//! 1000 connections that each send half a request head. The bound of 800
//! per pod refuses 200 of them with a 503 at once; the header read timeout
//! (5 s here) cuts the other 800; meanwhile another pod's requests are all
//! answered, none slowed past a generous bound; the daemon's memory stays
//! bounded and every connection is given back.
use std::time::{Duration, Instant};

use serde_json::Value;
use tagger_e2e::{Cluster, eventually, text, workspace};

/// The daemon's resident memory, KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_heads_are_cut_and_a_greedy_pod_is_bounded_while_others_are_served() {
    let cluster = Cluster::up("hostile.yaml");
    let pid = cluster.daemon_pid();
    assert_eq!(cluster.curl("client", "http://a:8080/", &[]), "a-base");
    let rss_before = rss_kib(pid);
    let script = workspace().join("tests/apps/slowloris.py");
    let attack = std::process::Command::new(tagger_e2e::tagger_bin())
        .args(cluster.run_dir_args())
        .args(["cluster", "exec", "attacker", "--", "python3"])
        .arg(&script)
        .args(["a", "8080", "1000", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the slow client");
    // While the slow connections are held: another pod is served.
    let held = eventually(Duration::from_secs(10), || {
        let open = cluster.config_dump()["proxy"]["connections_open"].as_u64()?;
        (open >= 800).then_some(open)
    });
    assert!(
        held.is_some(),
        "the slow connections never reached the bound"
    );
    let rss_peak = rss_kib(pid);
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let started = Instant::now();
        assert_eq!(cluster.curl("client", "http://a:8080/", &[]), "a-base");
        slowest = slowest.max(started.elapsed());
    }
    let out = attack.wait_with_output().expect("the slow client");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_str(&text(&out.stdout)).expect("slowloris report");
    assert_eq!(report["opened"], 1000, "{report}");
    assert_eq!(report["refused_503"], 200, "{report}");
    assert_eq!(report["closed_without_answer"], 800, "{report}");
    assert_eq!(report["still_open"], 0, "{report}");
    let proxy = eventually(Duration::from_secs(10), || {
        let proxy = cluster.config_dump()["proxy"].clone();
        (proxy["connections_open"] == 0).then_some(proxy)
    })
    .expect("every connection given back");
    assert_eq!(proxy["refused_over_pod_limit"], 200, "{proxy}");
    assert!(
        proxy["closed_by_header_read_timeout"].as_u64() >= Some(800),
        "{proxy}"
    );
    let rss_after = rss_kib(pid);
    println!(
        "daemon RSS {rss_before} KiB before, {rss_peak} KiB holding 800 slow heads, {rss_after} KiB after; \
         another pod's 30 requests meanwhile, slowest {slowest:?} (curl in a pod, process start included)"
    );
    // Bounds far above what is seen, so the test speaks of the design
    // (memory per held connection, no head-of-line blocking), not of this
    // machine's speed.
    assert!(rss_peak < rss_before + 64 * 1024, "RSS grew past 64 MiB");
    assert!(
        slowest < Duration::from_secs(2),
        "another pod slowed: {slowest:?}"
    );
}

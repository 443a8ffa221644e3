//! The foundation end to end: real pods (network namespaces + cgroups), the
//! real daemon with its eBPF programs, Python http.server apps and curl.
use std::time::{Duration, Instant};

use tagger_e2e::{
    Cluster, TestDir, cluster_file, eventually, flow_delta, release_shared, requests_where, shared,
    tagger_bin, text,
};

const GRAY_CHAIN: &str = "a-gray -> b-gray -> c-gray";
const BASE_CHAIN: &str = "a-base -> b-base -> c-base";

#[test]
fn b1_pod_dyeing_keeps_a_request_in_the_lane_of_the_pod_it_entered() {
    let cluster = shared("abc.yaml");
    let a_gray = cluster.pod_ip("a-gray");
    let a_base = cluster.pod_ip("a-base");
    let before = cluster.flows();
    for _ in 0..5 {
        assert_eq!(
            cluster.curl_from_node(&format!("http://{a_gray}:8080/"), &[]),
            GRAY_CHAIN
        );
        assert_eq!(
            cluster.curl_from_node(&format!("http://{a_base}:8080/"), &[]),
            BASE_CHAIN
        );
    }
    let flows = flow_delta(&before, &cluster.flows());
    let dyed: Vec<&serde_json::Value> = flows
        .iter()
        .filter(|f| f["source"] == "a-gray" && f["service"] == "b")
        .collect();
    assert_eq!(dyed.len(), 1, "{flows:#?}");
    assert_eq!(dyed[0]["endpoint"], "b-gray");
    assert_eq!(dyed[0]["lane"], "gray");
    assert_eq!(dyed[0]["reason"], "pod-lane");
    assert_eq!(dyed[0]["requests"], 5);
    let base = cluster.flow("a-base", "b", "b-base");
    assert_eq!(base["lane"], serde_json::Value::Null);
    assert_eq!(base["reason"], "default");
    // b-gray copied the lane header tagger put on its inbound request.
    assert_eq!(cluster.flow("b-gray", "c", "c-gray")["lane"], "gray");
    let table = text(&cluster.tagger(&["flows"]).stdout);
    assert!(
        table.lines().next().unwrap().starts_with("SOURCE"),
        "{table}"
    );
    assert!(table.contains("pod-lane"), "{table}");
}

#[test]
fn b4_fallback_to_baseline_where_the_lane_has_no_pod_and_back() {
    let cluster = Cluster::up("abc-no-b-gray.yaml");
    let a_gray = cluster.pod_ip("a-gray");
    let answer = cluster.curl_from_node(&format!("http://{a_gray}:8080/"), &[]);
    assert_eq!(answer, "a-gray -> b-base -> c-gray");
    let fallback = cluster.flow("a-gray", "b", "b-base");
    assert_eq!(fallback["lane"], "gray");
    assert_eq!(fallback["fallback"], true);
    let table = text(&cluster.tagger(&["flows"]).stdout);
    assert!(table.contains("(fallback)"), "{table}");
    // The lane header travelled on through the baseline pod, so c is gray again.
    assert_eq!(cluster.flow("b-base", "c", "c-gray")["reason"], "header");
}

#[test]
fn lane_header_from_the_client_is_honoured_and_its_alias_too() {
    let cluster = shared("abc.yaml");
    assert_eq!(
        cluster.curl("client", "http://a:8080/", &["x-lane: gray"]),
        GRAY_CHAIN
    );
    assert_eq!(cluster.curl("client", "http://a:8080/", &[]), BASE_CHAIN);
    // x-mse-tag (the reference product's header) picks a-gray; a-gray's own
    // sticky lane then dyes the rest of the chain.
    assert_eq!(
        cluster.curl("client", "http://a:8080/", &["x-mse-tag: gray"]),
        GRAY_CHAIN
    );
    assert_eq!(cluster.flow("client", "a", "a-gray")["reason"], "header");
    assert_eq!(cluster.flow("client", "a", "a-base")["reason"], "default");
}

#[test]
fn registry_style_call_to_a_pod_address_is_routed_by_lane() {
    let cluster = shared("abc.yaml");
    let a_base = cluster.pod_ip("a-base");
    // As a Eureka/Nacos client would: straight to an instance's address.
    let url = format!("http://{a_base}:8080/");
    assert_eq!(cluster.curl("client", &url, &["x-lane: gray"]), GRAY_CHAIN);
    assert_eq!(cluster.curl("client", &url, &[]), BASE_CHAIN);
    assert_eq!(cluster.flow("client", "a", "a-gray")["lane"], "gray");
}

#[test]
fn one_keep_alive_connection_carries_requests_of_two_lanes() {
    let cluster = shared("abc.yaml");
    let script = tagger_e2e::workspace().join("tests/apps/keepalive.py");
    let before = cluster.flows();
    let out = cluster.exec(
        "client",
        &[
            "python3",
            script.to_str().unwrap(),
            "a",
            "8080",
            "gray",
            "-",
            "gray",
            "-",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answers: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(
        answers,
        vec![GRAY_CHAIN, BASE_CHAIN, GRAY_CHAIN, BASE_CHAIN]
    );
    let flows = flow_delta(&before, &cluster.flows());
    let to =
        |pod: &str| requests_where(&flows, |f| f["source"] == "client" && f["endpoint"] == pod);
    assert_eq!((to("a-gray"), to("a-base")), (2, 2), "{flows:#?}");
}

#[test]
fn non_http_bytes_on_a_managed_port_pass_through_untouched() {
    let cluster = shared("abc.yaml");
    let script = tagger_e2e::workspace().join("tests/apps/tcp_client.py");
    let before = cluster.config_dump()["kernel"]["connect_redirected"]
        .as_u64()
        .unwrap();
    let payload = "\u{1}\u{2}binary-ish payload, not HTTP\n";
    for target in ["echo", &cluster.pod_ip("echo")] {
        let out = cluster.exec(
            "client",
            &["python3", script.to_str().unwrap(), target, "9000", payload],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), payload.trim());
    }
    // Both connections went through the proxy, which spliced them.
    let after = cluster.config_dump()["kernel"]["connect_redirected"]
        .as_u64()
        .unwrap();
    assert!(
        after >= before + 2,
        "redirected before {before}, after {after}"
    );
}

#[test]
fn malformed_http_gets_an_error_and_the_service_keeps_working() {
    let cluster = shared("abc.yaml");
    let script = tagger_e2e::workspace().join("tests/apps/raw_http.py");
    let script = script.to_str().unwrap();
    let bad_header = "GET / HTTP/1.1\\r\\nHost: a\\r\\nno colon here\\r\\n\\r\\n";
    let out = cluster.exec("client", &["python3", script, "a", "8080", bad_header]);
    assert_eq!(
        text(&out.stdout),
        "HTTP/1.1 400 Bad Request",
        "{}",
        text(&out.stderr)
    );
    let scratch = TestDir::new("huge");
    let huge = scratch.join("request");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "y".repeat(600 * 1024)
    );
    std::fs::write(&huge, request).unwrap();
    let out = cluster.exec(
        "client",
        &[
            "python3",
            script,
            "a",
            "8080",
            &format!("@{}", huge.display()),
        ],
    );
    assert!(
        text(&out.stdout).starts_with("HTTP/1.1 431"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(cluster.curl("client", "http://a:8080/", &[]), BASE_CHAIN);
}

#[test]
fn daemon_killed_fails_open_and_resumes_on_restart() {
    let cluster = Cluster::up("abc.yaml");
    let a_gray = cluster.pod_ip("a-gray");
    assert_eq!(
        cluster.curl_from_node(&format!("http://{a_gray}:8080/"), &[]),
        GRAY_CHAIN
    );

    let pid = cluster.daemon_pid();
    // SAFETY: the pid is the daemon this test's cluster started.
    assert_eq!(unsafe { libc_kill(pid, 9) }, 0);
    let killed = Instant::now();
    // New connections go straight to their destination: the service name
    // (answered by the kube-proxy stand-in) and pod addresses.
    // How fast is the bench's figure (`fail_open_sigkill_ms`); here the
    // deadline is generous and only the outcome counts.
    let answer = eventually(Duration::from_secs(10), || {
        let out = cluster.exec("client", &["curl", "-sS", "-m", "1", "http://a:8080/"]);
        out.status.success().then(|| text(&out.stdout))
    });
    assert_eq!(
        answer.as_deref(),
        Some(BASE_CHAIN),
        "no direct answer after kill -9"
    );
    println!("direct after kill -9 within {:?}", killed.elapsed());
    // Without the daemon there is no lane routing: gray enters, baseline follows.
    assert_eq!(
        cluster.curl_from_node(&format!("http://{a_gray}:8080/"), &[]),
        "a-gray -> b-base -> c-base"
    );

    let out = cluster.tagger(&["cluster", "restart-daemon"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The same app processes, not restarted, are lane-routed again.
    assert_eq!(
        cluster.curl_from_node(&format!("http://{a_gray}:8080/"), &[]),
        GRAY_CHAIN
    );
    assert_eq!(cluster.flow("a-gray", "b", "b-gray")["reason"], "pod-lane");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// `tagger cluster up FILE` with its own run directory.
fn cluster_up(run_dir: &std::path::Path, file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(tagger_bin())
        .arg("--run-dir")
        .arg(run_dir)
        .args(["cluster", "up"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn bad_cluster_files_are_refused_naming_the_place_and_leave_nothing_behind() {
    // Up by hand, outside the harness: no other cluster may be up.
    release_shared();
    let scratch = TestDir::new("bad");
    let dir = scratch.path();
    // The copies live elsewhere: make the apps' paths absolute.
    let apps = tagger_e2e::workspace().join("tests/apps/");
    let valid = std::fs::read_to_string(cluster_file("abc.yaml")).unwrap();
    let cases = [
        (
            "unknown-field",
            valid.replace(
                "    port: 8080\n    pods:\n      - name: a-base",
                "    port: 8080\n    colour: red\n    pods:\n      - name: a-base",
            ),
            "unknown field `colour`",
        ),
        (
            "duplicate-pod",
            valid.replace("name: b-base", "name: a-base"),
            "services[1].pods[0].name: pod name \"a-base\" is already used at services[0].pods[0]",
        ),
        (
            "missing-command",
            valid.replace(
                "        command: [python3, ../apps/echo.py, --port, \"9000\"]\n",
                "",
            ),
            "services[3].pods[0].command",
        ),
        (
            "lane-without-pods",
            valid.replace(
                "lanes:\n  - name: gray\n    sticky: true\n",
                "lanes:\n  - name: gray\n    sticky: true\n  - name: blue\n",
            ),
            "lanes[1]: no pod is in lane \"blue\"",
        ),
        (
            "undeclared-lane",
            valid.replace("lane: gray\n        command", "lane: grey\n        command"),
            "services[0].pods[1].lane: lane \"grey\" is not declared",
        ),
    ];
    for (name, content, expected) in cases {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, content.replace("../apps/", apps.to_str().unwrap())).unwrap();
        let out = cluster_up(&dir.join("run"), &path);
        if out.status.success() {
            let _ = std::process::Command::new(tagger_bin())
                .arg("--run-dir")
                .arg(dir.join("run"))
                .args(["cluster", "down"])
                .output();
            panic!("{name}: accepted");
        }
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(expected),
            "{name}: error does not say {expected:?}:\n{stderr}"
        );
        assert_eq!(
            tagger_e2e::settled_leftovers(),
            Vec::<String>::new(),
            "{name}: left things behind"
        );
    }
    // A pod whose command dies at start: up fails, shows its log, and cleans up.
    let dying = valid
        .replace(
            "command: [sleep, infinity]",
            "command: [sh, -c, \"echo about to fail; exit 3\"]",
        )
        .replace(
            "  - name: client\n    pods:",
            "  - name: client\n    port: 7000\n    pods:",
        );
    let path = dir.join("dying.yaml");
    std::fs::write(&path, dying.replace("../apps/", apps.to_str().unwrap())).unwrap();
    let out = cluster_up(&dir.join("run"), &path);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pod client exited during start-up") && stderr.contains("about to fail"),
        "{stderr}"
    );
    assert_eq!(tagger_e2e::settled_leftovers(), Vec::<String>::new());
}

#[test]
fn ctrl_c_during_up_leaves_nothing_behind() {
    // Up by hand, outside the harness: no other cluster may be up.
    release_shared();
    let scratch = TestDir::new("int");
    let run_dir = scratch.path();
    for delay_ms in [150, 600] {
        let child = std::process::Command::new(tagger_bin())
            .arg("--run-dir")
            .arg(run_dir)
            .args(["cluster", "up"])
            .arg(cluster_file("abc.yaml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: the pid is the child this test just spawned.
        assert_eq!(unsafe { libc_kill(child.id() as i32, 2) }, 0);
        let out = child.wait_with_output().unwrap();
        assert!(
            !out.status.success(),
            "up finished before the interrupt ({delay_ms} ms)"
        );
        assert_eq!(
            tagger_e2e::settled_leftovers(),
            Vec::<String>::new(),
            "after Ctrl-C at {delay_ms} ms: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn a_second_cluster_is_refused_and_the_first_keeps_working() {
    let cluster = shared("abc.yaml");
    let scratch = TestDir::new("other");
    let other = scratch.path();
    let out = cluster_up(other, &cluster_file("abc.yaml"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("another local cluster is up"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        cluster.curl("client", "http://a:8080/", &["x-lane: gray"]),
        GRAY_CHAIN
    );
}

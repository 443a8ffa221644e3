//! Rules end to end: scenario A's cases through real services, and live rule
//! changes under steady load (effective within 1 s, no request lost).
use std::time::Duration;

use tagger_e2e::{Cluster, now, text, workspace};

const GRAY: &str = "device.v1111 -> charge.v2222 --> order.v2222 --> base.v1111";
const BASE: &str = "device.v1111 -> charge.v1111 --> order.v1111 --> base.v1111";

#[test]
fn scenario_a_query_and_header_cases() {
    let cluster = Cluster::up(workspace().join("demo/scenario-a.yaml").to_str().unwrap());
    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("?userId=111", &[], GRAY, "111"),
        ("?userId=222", &[], GRAY, "222"),
        ("?userId=333", &[], GRAY, "333"),
        ("?userId=101", &[], GRAY, "101"),
        ("?userId=201", &[], GRAY, "201"),
        ("?userId=1001", &[], GRAY, "1001"),
        ("?userId=444", &[], BASE, "444"),
        ("?userId=1002", &[], BASE, "1002"),
        ("", &[], BASE, "null"),
        ("", &["mse-username: msd01"], GRAY, "null"),
        ("", &["mse-username: msd02"], GRAY, "null"),
        ("", &["mse-username: msd04"], BASE, "null"),
    ];
    for (query, headers, chain, user) in cases {
        for _ in 0..3 {
            let answer = cluster.curl(
                "client",
                &format!("http://device:8080/device{query}"),
                headers,
            );
            assert_eq!(
                answer,
                format!("{chain} (userId: {user})"),
                "{query} {headers:?}"
            );
        }
    }
    let by_rule = cluster.flow("device-v1", "charge", "charge-v2");
    assert_eq!(by_rule["reason"], "rule:charge-gray");
    // order-v2's call to base: inherited gray, no gray base, so baseline.
    let fallback = cluster.flow("order-v2", "base", "base-v1");
    assert_eq!(
        (&fallback["lane"], &fallback["fallback"]),
        (&"gray".into(), &true.into())
    );
}

#[test]
fn live_rule_changes_apply_within_a_second_and_lose_nothing() {
    // The test edits the file: work on a copy with absolute app paths.
    let dir = std::env::temp_dir().join(format!("tagger-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let apps = workspace().join("tests/apps/");
    let original = std::fs::read_to_string(workspace().join("tests/clusters/rules.yaml"))
        .unwrap()
        .replace("../apps/", apps.to_str().unwrap());
    let file = dir.join("rules.yaml");
    std::fs::write(&file, &original).unwrap();
    let cluster = Cluster::up(file.to_str().unwrap());

    let load = cluster.steady_load("client", "http://a:8080/?userId=7", 9, &[]);
    let pause = || std::thread::sleep(Duration::from_millis(1500));
    pause();

    // 1. Disable the rule: back to baseline ("emergency downgrade").
    let t_disable = now();
    let out = cluster.tagger(&["rules", "disable", "a-user"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    pause();

    // 2. Edit the file (the rule is enabled there): gray again.
    let t_edit = now();
    std::fs::write(&file, original.replace("values: [7]", "values: [7, 9]")).unwrap();
    pause();

    // 3. A rule that does not parse is refused, naming rule and field; the
    // rules in force stay in force.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "rules:\n  - name: a-user\n    service: a\n    lane: gray\n    conditions:\n      - {source: query, name: userId, op: within, value: 7}\n").unwrap();
    let out = cluster.tagger(&["rules", "apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("a-user")
            && stderr.contains("conditions[0].op")
            && stderr.contains("within"),
        "{stderr}"
    );
    pause();

    // 4. Apply a replacement that no longer matches userId 7, then delete it.
    let t_apply = now();
    let replacement = dir.join("replacement.yaml");
    std::fs::write(&replacement, "rules:\n  - name: a-user\n    service: a\n    lane: gray\n    conditions:\n      - {source: query, name: userId, op: '=', value: 8}\n").unwrap();
    let out = cluster.tagger(&["rules", "apply", "-f", replacement.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&cluster.tagger(&["rules", "list", "--json"]).stdout);
    let rules: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rules[0]["name"], "a-user");
    assert!(rules[0]["hits"].as_u64().unwrap() > 0, "{listed}");
    let out = cluster.tagger(&["rules", "delete", "a-user"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&cluster.tagger(&["rules", "list"]).stdout).starts_with("no rules"));

    let answers = load.answers();
    let mut count = 0;
    // Last request still in the old lane after each change: the switch time.
    let mut last_old = [0.0f64; 3];
    for answer in &answers {
        let (t, status, body) = (answer.at, answer.status, answer.body.as_str());
        count += 1;
        assert_eq!(status, 200, "request failed at {t}: {body}");
        // Expected lane in each phase, leaving each change 1 s to apply.
        let expected = if t < t_disable {
            Some("a-gray")
        } else if t < t_disable + 1.0 {
            None
        } else if t < t_edit {
            Some("a-base")
        } else if t < t_edit + 1.0 {
            None
        } else if t < t_apply {
            Some("a-gray")
        } else if t < t_apply + 1.0 {
            None
        } else {
            Some("a-base")
        };
        for (i, (start, old)) in [
            (t_disable, "a-gray"),
            (t_edit, "a-base"),
            (t_apply, "a-gray"),
        ]
        .iter()
        .enumerate()
        {
            if t >= *start && t < start + 1.0 && body == *old {
                last_old[i] = last_old[i].max(t - start);
            }
        }
        if let Some(expected) = expected {
            assert_eq!(
                body, expected,
                "at {t:.3} (disable {t_disable:.3}, edit {t_edit:.3}, apply {t_apply:.3})"
            );
        }
    }
    assert!(count > 300, "only {count} requests");
    println!(
        "{count} requests, 0 failed; old lane last seen after: disable {:.0} ms, file edit {:.0} ms, apply {:.0} ms",
        last_old[0] * 1000.0,
        last_old[1] * 1000.0,
        last_old[2] * 1000.0
    );
    drop(cluster);
    std::fs::remove_dir_all(&dir).unwrap();
}

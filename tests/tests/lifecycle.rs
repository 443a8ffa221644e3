//! SPEC scenario C: under steady load, a lane's pod goes away and comes
//! back, and no request is lost; routing follows within about a second.
use std::time::Duration;

use tagger_e2e::{Cluster, now, text};

#[test]
fn a_lane_pod_leaving_and_returning_loses_no_request() {
    let cluster = Cluster::up("abc.yaml");
    let load = cluster.steady_load("client", "http://a:8080/", 8, &["x-lane: gray"]);
    std::thread::sleep(Duration::from_millis(1500));
    let t_stop = now();
    let out = cluster.tagger(&["cluster", "stop-pod", "b-gray"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(2500));
    let t_start = now();
    let out = cluster.tagger(&["cluster", "start-pod", "b-gray"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t_started = now();

    let answers = load.answers();
    let (gray, fallback) = ("a-gray -> b-gray -> c-gray", "a-gray -> b-base -> c-gray");
    let mut count = 0;
    let mut back_after = None;
    for answer in &answers {
        let (t, status, body) = (answer.at, answer.status, answer.body.as_str());
        count += 1;
        assert_eq!(
            status, 200,
            "request lost at {t:.3} (stop {t_stop:.3}, start {t_start:.3}): {body}"
        );
        if t < t_stop {
            assert_eq!(body, gray, "before the stop");
        } else if t < t_start {
            // The pod is gone: its lane falls back to baseline for b, and
            // comes back at c. Right after the stop either may answer.
            assert!(
                body == fallback || (t < t_stop + 1.0 && body == gray),
                "at {t:.3}: {body}"
            );
        } else if body == gray && back_after.is_none() {
            back_after = Some(t - t_started);
        } else {
            assert!(body == gray || body == fallback, "at {t:.3}: {body}");
        }
    }
    // About 40 requests/s through three Python hops for 8 s.
    assert!(count > 150, "only {count} requests");
    let back_after = back_after.expect("the gray pod never served again");
    // The health check runs every second.
    assert!(
        back_after < 1.5,
        "gray back {back_after:.2} s after the pod listened"
    );
    println!(
        "{count} requests, 0 lost; gray served again {:.0} ms after the pod listened",
        back_after * 1000.0
    );
    let table = text(&cluster.tagger(&["flows"]).stdout);
    assert!(table.contains("(fallback)"), "{table}");
}

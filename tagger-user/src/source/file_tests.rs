//! The file source on real files: the first inventory, an edit pushed at
//! once (inotify), a bad edit refused, a placement change keeping the
//! rules' revision.
use std::{ffi::OsString, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::{
    Source,
    file::{FileSource, inventory, load_placement, relevant},
};
use crate::{
    config::ClusterFile,
    state::{Inventory, Readiness, RulesOrigin, ServicePort},
};

const FILE: &str = r#"
lanes: [{name: gray, sticky: true}]
services:
  - name: web
    port: 8080
    pods:
      - {name: web-1, command: [x]}
      - {name: web-2, command: [x], labels: {tagger.io/lane: gray}}
  - name: client
    pods:
      - {name: client, command: [x]}
rules:
  - {name: r, service: web, lane: gray, conditions: [{source: query, name: u, op: '=', value: 1}]}
"#;

const PLACEMENT: &str = r#"{
  "pods": [
    {"name": "web-1", "ip": "10.0.0.1", "cgroup_id": 1},
    {"name": "web-2", "ip": "10.0.0.2", "cgroup_id": 2},
    {"name": "client", "ip": "10.0.0.3", "cgroup_id": 3}
  ],
  "services": [{"name": "web", "address": "10.0.1.1"}]
}"#;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tagger-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Write-then-rename, as editors and `cluster up` do.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_file_and_its_placement_make_an_inventory() {
    let file = ClusterFile::parse(FILE, "c.yaml".as_ref()).unwrap();
    let placement = serde_json::from_str(PLACEMENT).unwrap();
    let inventory = inventory(&file, &placement, 4).unwrap();
    let web = &inventory.services[0];
    assert_eq!(
        (web.address, &web.ports[..]),
        (
            Some("10.0.1.1".parse().unwrap()),
            &[ServicePort::new(8080)][..]
        )
    );
    let endpoints: Vec<(&str, u16, Readiness)> = web
        .endpoints
        .iter()
        .map(|e| (e.pod.as_str(), e.ports[0].target_port, e.readiness))
        .collect();
    assert_eq!(
        endpoints,
        [
            ("web-1", 8080, Readiness::Probe),
            ("web-2", 8080, Readiness::Probe)
        ]
    );
    let client = &inventory.services[1];
    assert!(client.ports.is_empty() && client.address.is_none());
    assert_eq!(inventory.pods[1].lane(), Some("gray"));
    assert_eq!(inventory.pods[2].cgroup_ids, [3]);
    assert_eq!(inventory.rules_origin, RulesOrigin::File { revision: 4 });
    let mut unplaced = placement.clone();
    unplaced.pods.pop();
    let error = super::file::inventory(&file, &unplaced, 0)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "pod \"client\" of the cluster file has no placement (was it started?)"
    );
}

async fn next(
    rx: &mut watch::Receiver<Option<Arc<Inventory>>>,
    within: Duration,
) -> Option<Arc<Inventory>> {
    match tokio::time::timeout(within, rx.changed()).await {
        Ok(Ok(())) => rx.borrow_and_update().clone(),
        _ => None,
    }
}

#[tokio::test]
async fn edits_are_pushed_and_bad_ones_refused() {
    let dir = Dir::new("edits");
    let config = dir.write("cluster.yaml", FILE);
    let placement = dir.write("placement.json", PLACEMENT);
    assert!(load_placement(&placement).is_ok());
    let (tx, mut rx) = watch::channel(None);
    // No poll within the test: only inotify can deliver an edit.
    let source = FileSource {
        config,
        placement,
        poll: Duration::from_secs(3600),
    };
    tokio::spawn(source.run(tx));
    let first = next(&mut rx, Duration::from_secs(2))
        .await
        .expect("first inventory");
    assert_eq!(first.rules_origin, RulesOrigin::File { revision: 0 });

    // An edit (a rename over the file): pushed by inotify; a new rules
    // revision.
    let start = std::time::Instant::now();
    dir.write("cluster.yaml", &FILE.replace("value: 1", "value: 2"));
    let edited = next(&mut rx, Duration::from_secs(1))
        .await
        .expect("edit pushed");
    println!("edit pushed after {:?}", start.elapsed());
    assert_eq!(edited.rules_origin, RulesOrigin::File { revision: 1 });
    assert_ne!(edited.rules, first.rules);
    // A bad edit: nothing pushed, the state in force stays.
    dir.write("cluster.yaml", &FILE.replace("op: '='", "op: within"));
    assert!(next(&mut rx, Duration::from_millis(800)).await.is_none());
    // A placement change alone: same rules revision.
    dir.write("cluster.yaml", &FILE.replace("value: 1", "value: 2"));
    dir.write("placement.json", &PLACEMENT.replace("10.0.1.1", "10.0.1.9"));
    let moved = loop {
        let inventory = next(&mut rx, Duration::from_secs(1))
            .await
            .expect("placement pushed");
        if inventory.services[0].address == Some("10.0.1.9".parse().unwrap()) {
            break inventory;
        }
    };
    assert_eq!(moved.rules_origin, RulesOrigin::File { revision: 2 });
    // Written in place (no rename): the file closed after writing.
    std::fs::write(
        dir.0.join("cluster.yaml"),
        FILE.replace("value: 1", "value: 3"),
    )
    .unwrap();
    let rewritten = next(&mut rx, Duration::from_secs(1))
        .await
        .expect("in-place edit pushed");
    assert_eq!(rewritten.rules_origin, RulesOrigin::File { revision: 3 });
}

#[test]
fn only_events_that_can_change_the_files_wake_the_source() {
    use inotify::EventMask as M;
    let names = [
        OsString::from("cluster.yaml"),
        OsString::from("placement.json"),
    ];
    let cases: [(M, Option<&str>, bool); 9] = [
        (M::CLOSE_WRITE, Some("cluster.yaml"), true),
        (M::CLOSE_WRITE, Some("placement.json"), true),
        // A busy neighbour (a log written beside the cluster file).
        (M::CLOSE_WRITE, Some("h2load.log"), false),
        (M::MODIFY, Some("cluster.yaml"), false),
        (M::MOVED_TO, Some("cluster.yaml"), true),
        // ConfigMap volumes switch a `..data` symlink.
        (M::MOVED_TO, Some("..data"), true),
        (M::CREATE, Some(".cluster.yaml.swp"), true),
        (M::DELETE, Some("cluster.yaml"), true),
        (M::Q_OVERFLOW, None, true),
    ];
    for (mask, name, expected) in cases {
        assert_eq!(
            relevant(mask, name.map(std::ffi::OsStr::new), &names),
            expected,
            "{mask:?} {name:?}"
        );
    }
}

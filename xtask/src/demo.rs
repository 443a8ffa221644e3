//! `cargo xtask demo`: the field report (SPEC scenario A) end to end.
//!
//! Starts device -> charge -> order -> base as a local cluster with the rule
//! on charge, sends the report's requests from a client pod ten times each,
//! prints every answer line as the report shows them, shows the flow-to-lane
//! map, removes the cluster, and fails unless every line is right.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};

const GRAY: &str = "device.v1111 -> charge.v2222 --> order.v2222 --> base.v1111";
const BASE: &str = "device.v1111 -> charge.v1111 --> order.v1111 --> base.v1111";
const REPEAT: usize = 10;

struct Case {
    /// The curl arguments after the URL's host, as the report wrote them.
    query: Option<&'static str>,
    header: Option<&'static str>,
    gray: bool,
}

const CASES: &[Case] = &[
    Case {
        query: Some("111"),
        header: None,
        gray: true,
    },
    Case {
        query: Some("222"),
        header: None,
        gray: true,
    },
    Case {
        query: Some("333"),
        header: None,
        gray: true,
    },
    Case {
        query: Some("101"),
        header: None,
        gray: true,
    },
    Case {
        query: Some("201"),
        header: None,
        gray: true,
    },
    Case {
        query: Some("1001"),
        header: None,
        gray: true,
    },
    Case {
        query: Some("444"),
        header: None,
        gray: false,
    },
    Case {
        query: Some("1002"),
        header: None,
        gray: false,
    },
    Case {
        query: None,
        header: None,
        gray: false,
    },
    // device does not copy mse-username: these reach charge's rule only
    // through tagger's pass-through of the header.
    Case {
        query: None,
        header: Some("mse-username:msd01"),
        gray: true,
    },
    Case {
        query: None,
        header: Some("mse-username:msd02"),
        gray: true,
    },
    Case {
        query: None,
        header: Some("mse-username:msd04"),
        gray: false,
    },
];

/// Removes the cluster however the demo ends.
struct ClusterGuard<'a> {
    tagger: &'a Path,
    run_dir: &'a Path,
}

impl Drop for ClusterGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.tagger)
            .arg("--run-dir")
            .arg(self.run_dir)
            .args(["cluster", "down"])
            .status();
    }
}

fn tagger_cmd(tagger: &Path, run_dir: &Path) -> Command {
    let mut cmd = Command::new(tagger);
    cmd.arg("--run-dir").arg(run_dir);
    cmd
}

pub fn run(root: &Path, tagger: &Path) -> Result<ExitCode> {
    let run_dir = PathBuf::from("/run/tagger-demo");
    let cluster = root.join("demo/scenario-a.yaml");
    println!(
        "== starting scenario A: device -> charge -> order -> base (charge, order: v1111 + gray v2222)"
    );
    let up = tagger_cmd(tagger, &run_dir)
        .args(["cluster", "up"])
        .arg(&cluster)
        .status()
        .context("starting the demo cluster")?;
    let _guard = ClusterGuard {
        tagger,
        run_dir: &run_dir,
    };
    if !up.success() {
        bail!("the demo cluster did not start (see the messages above)");
    }
    println!(
        "== rule on charge, lane gray (sticky), mode any: userId in (111,222,333); userId mod100 = 1; header mse-username in (msd01,msd02,msd03)"
    );

    let mut wrong = 0;
    for case in CASES {
        let url = match case.query {
            Some(id) => format!("http://device:8080/device?userId={id}"),
            None => "http://device:8080/device".to_string(),
        };
        let mut shown = String::from("for i in {1..10}; do curl");
        if let Some(h) = case.header {
            shown.push_str(&format!(" -H \"{h}\""));
        }
        println!("\n[client]# {shown} {url}; echo; done");
        let shown_id = case.query.unwrap_or("null");
        let expected = format!(
            "{} (userId: {shown_id})",
            if case.gray { GRAY } else { BASE }
        );
        for _ in 0..REPEAT {
            let mut curl = tagger_cmd(tagger, &run_dir);
            curl.args(["cluster", "exec", "client", "--", "curl", "-s", "-m", "10"]);
            if let Some(h) = case.header {
                curl.args(["-H", h]);
            }
            let out = curl
                .arg(&url)
                .output()
                .context("running curl in the client pod")?;
            let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if answer == expected {
                println!("{answer}");
            } else {
                wrong += 1;
                println!("{answer}    <-- WRONG, expected: {expected}");
            }
        }
    }

    println!("\n== flow-to-lane map (tagger flows)");
    let _ = tagger_cmd(tagger, &run_dir).arg("flows").status();
    println!("\n== per-lane traffic (tagger lanes)");
    let _ = tagger_cmd(tagger, &run_dir).arg("lanes").status();
    println!("\n== rules in force (tagger rules list)");
    let _ = tagger_cmd(tagger, &run_dir)
        .args(["rules", "list"])
        .status();

    let total = CASES.len() * REPEAT;
    if wrong == 0 {
        println!("\nPASS: all {total} answers match the field report");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\nFAIL: {wrong} of {total} answers are wrong");
        Ok(ExitCode::FAILURE)
    }
}

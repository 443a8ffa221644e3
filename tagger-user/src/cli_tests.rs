//! `tagger daemon` flags: the local cluster's, and SPEC.md's fixed
//! Kubernetes interface, with NODE_NAME and HOST_IP read from an injected
//! environment; `tagger flows|lanes --kubernetes`'s.
use clap::Parser;

use crate::{
    cli::{Cli, Command, FlowsView},
    ctl::cluster::ClusterTarget,
    daemon::{DaemonArgs, SourceArgs},
};

fn daemon_args(args: &[&str], env: &[(&str, &str)]) -> Result<DaemonArgs, String> {
    let cli =
        Cli::try_parse_from(["tagger", "daemon"].iter().chain(args)).map_err(|e| e.to_string())?;
    let Command::Daemon(daemon) = cli.command else {
        unreachable!()
    };
    daemon
        .daemon_args("/run/tagger/admin.sock".into(), |name| {
            env.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .map_err(|e| e.to_string())
}

#[test]
fn kubernetes_mode_takes_the_fixed_interface() {
    let args = daemon_args(
        &[
            "--kubernetes",
            "--node-name=node-a",
            "--proxy-address=10.0.0.11:15001",
            "--metrics-address=10.0.0.11:15090",
            "--cgroup-root=/sys/fs/cgroup/k8s",
            "--lane-header=x-tag",
            "--passthrough-header=x-user-id",
            "--passthrough-header=mse-username",
        ],
        &[],
    )
    .unwrap();
    let SourceArgs::Kubernetes(config) = &args.source else {
        panic!("{args:?}")
    };
    assert_eq!(config.node_name, "node-a");
    assert_eq!(config.lane_header, "x-tag");
    assert_eq!(config.passthrough_headers, ["x-user-id", "mse-username"]);
    assert_eq!(args.cgroup, std::path::Path::new("/sys/fs/cgroup/k8s"));
    assert_eq!(args.proxy_addr.to_string(), "10.0.0.11:15001");
    assert_eq!(args.metrics_addr.unwrap().to_string(), "10.0.0.11:15090");
}

/// (flags, environment, Ok((node, proxy, cgroup)) or the error's words).
type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    Result<(&'static str, &'static str, &'static str), &'static str>,
);

#[test]
fn defaults_and_errors() {
    let cases: [Case; 8] = [
        (
            &["--kubernetes"],
            &[("NODE_NAME", "n1"), ("HOST_IP", "10.0.0.5")],
            Ok(("n1", "10.0.0.5:15001", "/sys/fs/cgroup")),
        ),
        (
            &["--kubernetes", "--node-name", "n2"],
            &[("NODE_NAME", "n1"), ("HOST_IP", "10.0.0.5")],
            Ok(("n2", "10.0.0.5:15001", "/sys/fs/cgroup")),
        ),
        (
            &["--kubernetes"],
            &[("HOST_IP", "10.0.0.5")],
            Err("--node-name or NODE_NAME"),
        ),
        (
            &["--kubernetes", "--node-name=n"],
            &[],
            Err("--proxy-address or HOST_IP"),
        ),
        (
            &["--kubernetes", "--config=c.yaml"],
            &[],
            Err("cannot be used with"),
        ),
        (
            &[
                "--kubernetes",
                "--node-name=n",
                "--proxy-address=10.0.0.5:15001",
                "--lane-header=x lane",
            ],
            &[],
            Err("--lane-header \"x lane\" is not a valid header name"),
        ),
        (
            &[
                "--kubernetes",
                "--node-name=n",
                "--proxy-address=10.0.0.5:15001",
                "--passthrough-header=a:b",
            ],
            &[],
            Err("--passthrough-header \"a:b\" is not a valid header name"),
        ),
        (
            &[
                "--config=c.yaml",
                "--placement=p.json",
                "--cgroup=/sys/fs/cgroup/tagger",
            ],
            &[],
            Err("--proxy-addr"),
        ),
    ];
    for (flags, env, want) in cases {
        let got = daemon_args(flags, env).map(|a| {
            let SourceArgs::Kubernetes(k) = a.source else {
                panic!()
            };
            (
                k.node_name,
                a.proxy_addr.to_string(),
                a.cgroup.display().to_string(),
            )
        });
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(
                (got.0.as_str(), got.1.as_str(), got.2.as_str()),
                want,
                "{flags:?}"
            ),
            (Err(error), Err(words)) => assert!(error.contains(words), "{flags:?}: {error}"),
            (got, want) => panic!("{flags:?}: {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn the_local_cluster_flags_still_work() {
    let args = daemon_args(
        &[
            "--config=c.yaml",
            "--placement=p.json",
            "--cgroup=/sys/fs/cgroup/tagger",
            "--proxy-addr=10.77.0.1:15001",
        ],
        &[],
    )
    .unwrap();
    let SourceArgs::File { config, placement } = &args.source else {
        panic!("{args:?}")
    };
    assert_eq!(
        (config.to_str(), placement.to_str()),
        (Some("c.yaml"), Some("p.json"))
    );
    assert_eq!(args.proxy_addr.to_string(), "10.77.0.1:15001");
}

/// `flows|lanes`: which daemons `--kubernetes` asks (`None`: this node's
/// admin socket), and `--by-path`.
type Target = (Option<ClusterTarget>, bool);

fn view_target(args: &[&str]) -> Result<Target, String> {
    let cli =
        Cli::try_parse_from(std::iter::once(&"tagger").chain(args)).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Flows(FlowsView { view, by_path }) => Ok((view.cluster.target(), by_path)),
        Command::Lanes(view) => Ok((view.cluster.target(), false)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_cluster_view_flags() {
    let deployed = ClusterTarget::default();
    let cases: Vec<(&[&str], Result<Target, &str>)> = vec![
        (&["flows"], Ok((None, false))),
        (&["flows", "--by-path", "--json"], Ok((None, true))),
        (
            &["flows", "--kubernetes"],
            Ok((Some(deployed.clone()), false)),
        ),
        (
            &["flows", "--kubernetes", "--by-path", "--watch"],
            Ok((Some(deployed.clone()), true)),
        ),
        (
            &[
                "lanes",
                "--kubernetes",
                "-n",
                "ops",
                "-l",
                "app=tagger,tier=edge",
                "--metrics-port",
                "9100",
            ],
            Ok((
                Some(ClusterTarget {
                    namespace: "ops".into(),
                    selector: "app=tagger,tier=edge".into(),
                    metrics_port: Some(9100),
                    ..deployed.clone()
                }),
                false,
            )),
        ),
        (
            &["lanes", "--kubernetes", "--namespace=ops", "--selector=a=b"],
            Ok((
                Some(ClusterTarget {
                    namespace: "ops".into(),
                    selector: "a=b".into(),
                    ..deployed.clone()
                }),
                false,
            )),
        ),
        // The Kubernetes flags mean nothing without --kubernetes.
        (&["flows", "-n", "ops"], Err("--kubernetes")),
        (&["lanes", "--metrics-port", "9100"], Err("--kubernetes")),
        (
            &["flows", "--kubernetes", "--metrics-port", "99999"],
            Err("99999"),
        ),
    ];
    for (args, want) in cases {
        match (view_target(args), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{args:?}"),
            (Err(error), Err(words)) => assert!(error.contains(words), "{args:?}: {error}"),
            (got, want) => panic!("{args:?}: {got:?}, want {want:?}"),
        }
    }
}

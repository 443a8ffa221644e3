//! Network plumbing of the local cluster: a bridge on the node, one network
//! namespace per pod joined to it by a veth pair, and a kube-proxy stand-in
//! (iptables DNAT in each pod) so service addresses answer even while the
//! tagger daemon is down.
use std::{net::Ipv4Addr, process::Command};

use super::ClusterError;

pub const BRIDGE: &str = "tagger0";
/// The node's address on the bridge: the proxy listens here, and it is the
/// pods' default gateway.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const PREFIX_LEN: u8 = 16;
const FIRST_POD_HOST: u32 = 10;
/// Service addresses live outside the bridge subnet, like a ClusterIP range.
const FIRST_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
pub const NETNS_PREFIX: &str = "tagger-";
pub const VETH_PREFIX: &str = "tv-";
const PEER_PREFIX: &str = "tp-";

pub fn pod_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(NODE_IP) - 1 + FIRST_POD_HOST + index as u32)
}

pub fn service_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_SERVICE_IP) + index as u32)
}

pub fn netns_name(pod: &str) -> String {
    format!("{NETNS_PREFIX}{pod}")
}

pub fn veth_name(pod: &str) -> String {
    format!("{VETH_PREFIX}{pod}")
}

/// Runs a command and turns a failure into an error that shows it.
pub fn run(program: &str, args: &[&str]) -> Result<String, ClusterError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| ClusterError::Spawn {
            what: program.to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(ClusterError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, ClusterError> {
    run("ip", args)
}

fn in_netns(netns: &str, program: &str, args: &[&str]) -> Result<String, ClusterError> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    ip(&full)
}

pub fn create_bridge() -> Result<(), ClusterError> {
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&[
        "addr",
        "add",
        &format!("{NODE_IP}/{PREFIX_LEN}"),
        "dev",
        BRIDGE,
    ])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    Ok(())
}

pub fn create_pod_network(pod: &str, address: Ipv4Addr) -> Result<(), ClusterError> {
    let netns = netns_name(pod);
    let veth = veth_name(pod);
    let peer = format!("{PEER_PREFIX}{pod}");
    ip(&["netns", "add", &netns])?;
    ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
    ip(&["link", "set", &veth, "master", BRIDGE])?;
    ip(&["link", "set", &veth, "up"])?;
    ip(&["link", "set", &peer, "netns", &netns])?;
    in_netns(&netns, "ip", &["link", "set", &peer, "name", "eth0"])?;
    in_netns(
        &netns,
        "ip",
        &[
            "addr",
            "add",
            &format!("{address}/{PREFIX_LEN}"),
            "dev",
            "eth0",
        ],
    )?;
    in_netns(&netns, "ip", &["link", "set", "eth0", "up"])?;
    in_netns(&netns, "ip", &["link", "set", "lo", "up"])?;
    in_netns(
        &netns,
        "ip",
        &["route", "add", "default", "via", &NODE_IP.to_string()],
    )?;
    Ok(())
}

/// kube-proxy's job for one service inside one pod: spread connections to
/// the service address over `backends` (iptables `statistic` rules, as
/// kube-proxy writes them).
pub fn add_service_nat(
    pod: &str,
    service: Ipv4Addr,
    port: u16,
    backends: &[Ipv4Addr],
) -> Result<(), ClusterError> {
    let netns = netns_name(pod);
    let count = backends.len();
    for (i, backend) in backends.iter().enumerate() {
        let destination = format!("{backend}:{port}");
        let service_ip = service.to_string();
        let port_text = port.to_string();
        let mut args: Vec<String> = [
            "-w",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            &service_ip,
            "-p",
            "tcp",
            "--dport",
            &port_text,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let remaining = count - i;
        if remaining > 1 {
            let probability = format!("{:.5}", 1.0 / remaining as f64);
            args.extend(
                [
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability,
                ]
                .map(String::from),
            );
        }
        args.extend(["-j", "DNAT", "--to-destination", &destination].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        in_netns(&netns, "iptables", &args)?;
    }
    Ok(())
}

/// Names of the network namespaces and links this tool made, found by prefix
/// (so that a crashed `up` can still be cleaned).
pub fn leftover_netns() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NETNS_PREFIX))
        .map(str::to_string)
        .collect()
}

pub fn leftover_links() -> Vec<String> {
    ip(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_string())
        .filter(|name| {
            name.starts_with(VETH_PREFIX) || name.starts_with(PEER_PREFIX) || name == BRIDGE
        })
        .collect()
}

pub fn delete_netns(name: &str) -> Result<(), ClusterError> {
    ip(&["netns", "del", name]).map(drop)
}

pub fn delete_link(name: &str) -> Result<(), ClusterError> {
    ip(&["link", "del", name]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(pod_ip(0), Ipv4Addr::new(10, 77, 0, 10));
        assert_eq!(pod_ip(300), Ipv4Addr::new(10, 77, 1, 54));
        assert_eq!(service_ip(0), Ipv4Addr::new(10, 78, 0, 1));
        assert!(veth_name("abcdefghijkl").len() <= 15);
    }
}

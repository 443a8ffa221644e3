//! The two nodes' network, all on one bridge: each node is an address of
//! the host on it (where its proxy listens, and its pods' gateway), each pod
//! a network namespace joined by a veth pair. ClusterIPs are on no
//! interface: tagger's connect hook reaches them, and without it (a node
//! whose daemon is gone) a kube-proxy stand-in in each pod, iptables DNAT
//! to the baseline endpoints, as the local cluster does.
//!
//! The names are the local cluster's (`tagger0`, `tagger-*`, `tv-*`), so
//! that whatever checks a host for leftovers of an end-to-end test sees
//! these too.
use std::{
    io::Write,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
};

use super::NodesError;

pub const BRIDGE: &str = "tagger0";
pub const PREFIX_LEN: u8 = 16;
pub const NETNS_PREFIX: &str = "tagger-";
const VETH_PREFIX: &str = "tv-";
const PEER_PREFIX: &str = "tp-";

pub fn netns(pod: &str) -> String {
    format!("{NETNS_PREFIX}{pod}")
}

/// Runs a command; a failure is an error that shows it.
pub fn run(program: &str, args: &[&str]) -> Result<String, NodesError> {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, NodesError> {
    let what = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NodesError::Command(what(), e.to_string()))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| NodesError::Command(what(), e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NodesError::Command(what(), e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(NodesError::Command(what(), stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bridge with the first node's address; the other nodes' are added
/// with [`add_node_address`].
pub fn create_bridge(first_node: Ipv4Addr) -> Result<(), NodesError> {
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    add_node_address(first_node)?;
    run("ip", &["link", "set", BRIDGE, "up"]).map(drop)
}

pub fn add_node_address(node: Ipv4Addr) -> Result<(), NodesError> {
    let cidr = format!("{node}/{PREFIX_LEN}");
    run("ip", &["addr", "add", &cidr, "dev", BRIDGE]).map(drop)
}

/// The MAC address of a pod's `eth0`: `0a:58` and its IPv4 address, as the
/// CNI bridge plugin long made it (and OVN-Kubernetes still does). A pod
/// made again at an address, with a new veth, then has the MAC the node
/// already knows for that address. With a random MAC (the kernel's), the
/// host kept sending to the old pod's MAC for as long as its neighbour
/// entry lived: REACHABLE for 15-45 s after the last confirmation, then
/// DELAY 5 s and 3 unicast probes before it asked again by broadcast; the
/// re-created pod could not be reached from the node (its processes and
/// its proxy) for ~20-30 s.
pub fn pod_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// A pod's namespace on the bridge, its node as the gateway.
pub fn create_pod_network(pod: &str, ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), NodesError> {
    let ns = netns(pod);
    let (veth, peer) = (format!("{VETH_PREFIX}{pod}"), format!("{PEER_PREFIX}{pod}"));
    run("ip", &["netns", "add", &ns])?;
    run(
        "ip",
        &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
    )?;
    run("ip", &["link", "set", &veth, "master", BRIDGE])?;
    run("ip", &["link", "set", &veth, "up"])?;
    run("ip", &["link", "set", &peer, "netns", &ns])?;
    let inside = |args: &[&str]| {
        let mut full = vec!["netns", "exec", &ns, "ip"];
        full.extend_from_slice(args);
        run("ip", &full)
    };
    inside(&["link", "set", &peer, "name", "eth0"])?;
    inside(&["link", "set", "eth0", "address", &pod_mac(ip)])?;
    inside(&["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", "eth0"])?;
    inside(&["link", "set", "eth0", "up"])?;
    inside(&["link", "set", "lo", "up"])?;
    inside(&["route", "add", "default", "via", &gateway.to_string()])?;
    Ok(())
}

/// kube-proxy's part in one pod: each `(ClusterIP, port, backends)` spread
/// over its backends (iptables `statistic`, as kube-proxy writes it), in
/// one `iptables-restore`.
pub fn add_service_nat(
    pod: &str,
    services: &[(Ipv4Addr, u16, Vec<Ipv4Addr>)],
) -> Result<(), NodesError> {
    let mut rules = String::from("*nat\n");
    for (address, port, backends) in services {
        for (i, backend) in backends.iter().enumerate() {
            let left = backends.len() - i;
            let pick = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.5} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            rules.push_str(&format!(
                "-A OUTPUT -d {address}/32 -p tcp --dport {port} {pick}-j DNAT --to-destination {backend}:{port}\n"
            ));
        }
    }
    rules.push_str("COMMIT\n");
    let ns = netns(pod);
    run_with_input(
        "ip",
        &["netns", "exec", &ns, "iptables-restore", "-w", "--noflush"],
        Some(&rules),
    )
    .map(drop)
}

/// `/etc/netns/<netns>/hosts` (names to ClusterIPs, as cluster DNS would
/// answer) and a resolv.conf that fails at once rather than time out.
pub fn write_hosts(pod: &str, hosts: &str) -> Result<(), NodesError> {
    let dir = Path::new("/etc/netns").join(netns(pod));
    let io = |e: std::io::Error| NodesError::Io(format!("writing {}", dir.display()), e);
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::write(dir.join("hosts"), hosts).map_err(io)?;
    std::fs::write(
        dir.join("resolv.conf"),
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .map_err(io)
}

/// Removes a pod's namespace (its veth goes with it) and hosts folder.
pub fn remove_pod_network(pod: &str) {
    let ns = netns(pod);
    let _ = run("ip", &["netns", "del", &ns]);
    let _ = run("ip", &["link", "del", &format!("{VETH_PREFIX}{pod}")]);
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&ns));
}

/// Removes every namespace, link and hosts folder of these names (a
/// crashed run's too): only one end-to-end test runs on a host at a time.
pub fn remove_all() {
    let netns = run("ip", &["netns", "list"]).unwrap_or_default();
    for name in netns.lines().filter_map(|l| l.split_whitespace().next()) {
        if let Some(pod) = name.strip_prefix(NETNS_PREFIX) {
            remove_pod_network(pod);
        }
    }
    let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
    for link in links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| n == BRIDGE || n.starts_with(VETH_PREFIX) || n.starts_with(PEER_PREFIX))
    {
        let _ = run("ip", &["link", "del", &link]);
    }
}

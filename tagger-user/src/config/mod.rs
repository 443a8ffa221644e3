//! The local cluster file (SPEC.md, "The local cluster file"): parsing and
//! validation. Everything that is wrong is reported with the place it is in
//! (`services[1].pods[0].command`), and nothing is started before the whole
//! file is known to be good.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::rules::RuleSpec;

mod trust;
pub use trust::{LaneHeaderFrom, LaneHeaderFromError};

pub const DEFAULT_LANE_HEADER: &str = "x-lane";
/// Header name the reference product (MSE) uses for the lane; always accepted.
pub const LANE_HEADER_ALIAS: &str = "x-mse-tag";
/// Pod labels that put a pod in a lane.
pub const LANE_LABELS: [&str; 2] = ["tagger.io/lane", "alicloud.service.tag"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cluster file {path}: {place}: {message}")]
    Invalid {
        path: PathBuf,
        place: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    #[serde(default = "default_lane_header")]
    pub lane_header: String,
    #[serde(default)]
    pub passthrough_headers: Vec<String>,
    #[serde(default)]
    pub lanes: Vec<LaneSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Largest body prefix a `body` rule condition reads (bytes).
    #[serde(default = "default_body_limit")]
    pub body_match_limit: usize,
    /// Bounds that keep slow, broken or hostile clients from wearing the
    /// proxy down.
    #[serde(default)]
    pub limits: LimitsSpec,
}

/// `limits:` of the cluster file. Each has a default a node can live with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSpec {
    /// A request head must arrive whole within this, from its first byte
    /// (or from the end of the previous answer on a kept-alive connection);
    /// else the connection is closed. HAProxy's `timeout http-request`,
    /// Envoy's `request_headers_timeout`, nginx's `client_header_timeout`.
    /// On HTTP/2 connections (which may idle for long), the interval of the
    /// keep-alive ping that finds a peer gone silent.
    pub header_read_timeout_ms: u64,
    /// Proxied connections open at once, from every pod together.
    pub max_connections: usize,
    /// Proxied connections open at once from one pod, so that one pod
    /// cannot take every connection the proxy will hold.
    pub max_connections_per_pod: usize,
    /// Pods whose calls the kernel tracks (redirects, correlates) at most;
    /// pods beyond it go direct, never refused, and are counted
    /// (`tagger_pods_untracked`, `config-dump` `maps.pods_untracked`).
    /// At most the kernel's slots (`MAX_POD_SLOTS` - 1).
    pub max_tracked_pods: usize,
    /// Redirected connections open at once at most, node-wide: past it a
    /// pod's connect goes direct (no lane, never refused), counted as
    /// `flows_full`. At most 7/8 of the kernel's flow map.
    pub max_kernel_flows: usize,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            // nginx's default: long enough for a kept-alive connection to
            // sit idle between an app's calls without being cut.
            header_read_timeout_ms: 60_000,
            max_connections: 20_000,
            max_connections_per_pod: 2_000,
            max_tracked_pods: tagger_common::MAX_POD_SLOTS as usize - 1,
            max_kernel_flows: tagger_common::MAX_FLOW_LIMIT as usize,
        }
    }
}

fn default_lane_header() -> String {
    DEFAULT_LANE_HEADER.to_string()
}

/// Largest body prefix a `body` rule condition reads, unless configured.
pub const DEFAULT_BODY_MATCH_LIMIT: usize = 64 * 1024;

fn default_body_limit() -> usize {
    DEFAULT_BODY_MATCH_LIMIT
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LaneSpec {
    pub name: String,
    /// A sticky lane holds for every later hop of a request once it is in it.
    #[serde(default)]
    pub sticky: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// The port callers use; a service without one is a plain pod group.
    #[serde(default)]
    pub port: Option<u16>,
    /// What the service's endpoints speak on `port`. Unset: what the
    /// caller speaks (an HTTP/2 prior-knowledge request goes out as HTTP/2,
    /// an HTTP/1.1 one as HTTP/1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Whose lane header a request to this service may be in: `any` (the
    /// default), `none`, or the services whose pods may set it.
    #[serde(default, skip_serializing_if = "LaneHeaderFrom::is_any")]
    pub lane_header_from: LaneHeaderFrom,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
}

/// `protocol:` of a service: how the proxy talks to its endpoints.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (requests that came as HTTP/2 are sent as HTTP/1.1).
    Http1,
    /// HTTP/2 with prior knowledge (h2c), one multiplexed connection per
    /// endpoint.
    Http2,
    /// gRPC: HTTP/2 as above; named apart so that a file says what it means.
    Grpc,
}

impl Protocol {
    pub fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub name: String,
    #[serde(default)]
    pub lane: Option<String>,
    /// Kubernetes-style labels; `tagger.io/lane` or `alicloud.service.tag`
    /// set the lane like `lane:` does.
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub command: Vec<String>,
    /// Extra environment for the command.
    #[serde(default)]
    pub env: HashMap<String, String>,
}

impl PodSpec {
    /// The pod's lane: `lane:` or one of the lane labels; `None` is baseline.
    pub fn effective_lane(&self) -> Option<&str> {
        self.lane.as_deref().or_else(|| {
            LANE_LABELS
                .iter()
                .find_map(|label| self.labels.get(*label).map(String::as_str))
        })
    }
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ClusterFile = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        file.validate()
            .map_err(|(place, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                place,
                message,
            })?;
        Ok(file)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        for (field, value) in [
            ("header_read_timeout_ms", self.limits.header_read_timeout_ms),
            ("max_connections", self.limits.max_connections as u64),
            (
                "max_connections_per_pod",
                self.limits.max_connections_per_pod as u64,
            ),
            ("max_tracked_pods", self.limits.max_tracked_pods as u64),
            ("max_kernel_flows", self.limits.max_kernel_flows as u64),
        ] {
            if value == 0 {
                return Err((format!("limits.{field}"), "must be at least 1".into()));
            }
        }
        let flows = tagger_common::MAX_FLOW_LIMIT as usize;
        if self.limits.max_kernel_flows > flows {
            return Err((
                "limits.max_kernel_flows".into(),
                format!("must be at most {flows} (7/8 of the kernel's flow map)"),
            ));
        }
        let slots = tagger_common::MAX_POD_SLOTS as usize - 1;
        if self.limits.max_tracked_pods > slots {
            return Err((
                "limits.max_tracked_pods".into(),
                format!("must be at most {slots} (the kernel's pod slots)"),
            ));
        }
        if !is_header_name(&self.lane_header) {
            return Err((
                "lane_header".into(),
                format!("{:?} is not a valid header name", self.lane_header),
            ));
        }
        for (i, h) in self.passthrough_headers.iter().enumerate() {
            if !is_header_name(h) {
                return Err((
                    format!("passthrough_headers[{i}]"),
                    format!("{h:?} is not a valid header name"),
                ));
            }
        }
        let mut lanes = HashSet::new();
        for (i, lane) in self.lanes.iter().enumerate() {
            check_name(&lane.name).map_err(|m| (format!("lanes[{i}].name"), m))?;
            if !lanes.insert(lane.name.as_str()) {
                return Err((
                    format!("lanes[{i}].name"),
                    format!("lane {:?} is declared twice", lane.name),
                ));
            }
        }
        let mut services = HashSet::new();
        let mut pods: HashMap<&str, String> = HashMap::new();
        let mut lanes_with_pods = HashSet::new();
        for (si, service) in self.services.iter().enumerate() {
            let place = format!("services[{si}]");
            check_name(&service.name).map_err(|m| (format!("{place}.name"), m))?;
            if !services.insert(service.name.as_str()) {
                return Err((
                    format!("{place}.name"),
                    format!("service {:?} is declared twice", service.name),
                ));
            }
            if service.port == Some(0) {
                return Err((format!("{place}.port"), "port 0 is not a port".into()));
            }
            if service.protocol.is_some() && service.port.is_none() {
                return Err((
                    format!("{place}.protocol"),
                    format!(
                        "service {:?} has a protocol but no port to speak it on",
                        service.name
                    ),
                ));
            }
            if service.pods.is_empty() {
                return Err((
                    format!("{place}.pods"),
                    format!("service {:?} has no pods", service.name),
                ));
            }
            for (pi, pod) in service.pods.iter().enumerate() {
                let place = format!("{place}.pods[{pi}]");
                check_name(&pod.name).map_err(|m| (format!("{place}.name"), m))?;
                if pod.name.len() > 12 {
                    // Interface names are limited to 15 bytes; we prefix 3.
                    return Err((
                        format!("{place}.name"),
                        format!("pod name {:?} is longer than 12 characters", pod.name),
                    ));
                }
                if let Some(first) = pods.insert(&pod.name, place.clone()) {
                    return Err((
                        format!("{place}.name"),
                        format!("pod name {:?} is already used at {first}", pod.name),
                    ));
                }
                if pod.command.is_empty() {
                    return Err((
                        format!("{place}.command"),
                        format!("pod {:?} has no command to run", pod.name),
                    ));
                }
                if let Some(lane) = pod.effective_lane() {
                    if !lanes.contains(lane) {
                        return Err((
                            format!("{place}.lane"),
                            format!(
                                "lane {lane:?} is not declared under `lanes:` (declared: {})",
                                join_or_none(lanes.iter())
                            ),
                        ));
                    }
                    lanes_with_pods.insert(lane);
                }
            }
        }
        for (si, service) in self.services.iter().enumerate() {
            service
                .lane_header_from
                .check_known(|name| services.contains(name), services.iter().copied())
                .map_err(|e| (format!("services[{si}].lane_header_from"), e.to_string()))?;
        }
        for (i, lane) in self.lanes.iter().enumerate() {
            if !lanes_with_pods.contains(lane.name.as_str()) {
                return Err((
                    format!("lanes[{i}]"),
                    format!(
                        "no pod is in lane {:?}; give a pod `lane: {}` or remove the lane",
                        lane.name, lane.name
                    ),
                ));
            }
        }
        self.validate_rules()
    }

    /// Checks the rules against the file's services and lanes.
    pub(crate) fn validate_rules(&self) -> Result<(), (String, String)> {
        let services: HashSet<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        let lanes: HashSet<&str> = self.lanes.iter().map(|l| l.name.as_str()).collect();
        validate_rules(&self.rules, &services, &lanes)
    }

    pub fn lane(&self, name: &str) -> Option<&LaneSpec> {
        self.lanes.iter().find(|l| l.name == name)
    }
}

/// Checks rules against the services and lanes there are: what the cluster
/// file checks, and what `tagger rules apply` checks against the state in
/// force. The error is (place, message), the place `rules[N].field`.
pub(crate) fn validate_rules(
    rules: &[RuleSpec],
    services: &HashSet<&str>,
    lanes: &HashSet<&str>,
) -> Result<(), (String, String)> {
    for (i, rule) in rules.iter().enumerate() {
        check_rule(rule, services, lanes).map_err(|(field, message)| {
            let place = if field.is_empty() {
                format!("rules[{i}]")
            } else {
                format!("rules[{i}].{field}")
            };
            (place, message)
        })?;
    }
    crate::rules::check_unique_names(rules).map_err(|m| ("rules".to_string(), m))?;
    Ok(())
}

/// Checks one rule against the services and lanes it may name: the checks
/// of `validate_rules`, shared with the Kubernetes source so that a
/// `TrafficRule` is refused with the words `tagger rules apply` uses. The
/// place is relative to the rule (`""` for the rule itself, `service`,
/// `lane`).
pub(crate) fn check_rule(
    rule: &RuleSpec,
    services: &HashSet<&str>,
    lanes: &HashSet<&str>,
) -> Result<(), (&'static str, String)> {
    rule.compile().map_err(|e| ("", e.to_string()))?;
    if !services.contains(rule.service.as_str()) {
        return Err((
            "service",
            format!(
                "rule {:?} guards unknown service {:?}",
                rule.name, rule.service
            ),
        ));
    }
    if !lanes.contains(rule.lane.as_str()) {
        return Err((
            "lane",
            format!("rule {:?} names unknown lane {:?}", rule.name, rule.lane),
        ));
    }
    Ok(())
}

fn join_or_none<'a>(names: impl Iterator<Item = &'a &'a str>) -> String {
    let mut names: Vec<&str> = names.copied().collect();
    names.sort_unstable();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// DNS-label-like names: they become host names and interface names.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (lowercase letters, digits and '-', at most 63)"
        ))
    }
}

fn is_header_name(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests;

//! Whose lane a request may arrive in (SPEC.md G): a service's
//! `lane_header_from`, resolved to the pods it trusts when the model is
//! built, and the verdict on one caller, a pure function the proxy asks
//! per request before the lane is decided.
//!
//! What a caller *claims* is the lane header on its request and the lane
//! tagger inherits for it (the header its own inbound request carried,
//! which an app that copies headers would have sent itself): both are
//! trusted or not together, so that a service's lock does not depend on
//! whether the app in front of it copies headers. The caller's own pod lane
//! is not a claim (the operator labelled the pod), nor are the destination's
//! rules.
use std::{collections::HashSet, fmt, sync::Arc};

use serde::{Serialize, Serializer};

/// A service's `lane_header_from` as the proxy asks it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LaneTrust {
    /// Every caller (the default).
    #[default]
    Any,
    /// No caller.
    Nobody,
    /// These pods: every pod of the listed services, serving or not.
    Pods(Arc<HashSet<String>>),
}

impl LaneTrust {
    /// Whether `caller` may put its request in a lane. `None`: the caller
    /// is not identified as a managed pod, which a list never trusts.
    pub fn trusts(&self, caller: Option<&str>) -> bool {
        match self {
            Self::Any => true,
            Self::Nobody => false,
            Self::Pods(pods) => caller.is_some_and(|caller| pods.contains(caller)),
        }
    }
}

/// `config-dump` shows whom a service trusts: `any`, `none`, or the pods
/// (sorted), so that a list that names a service with no pods shows as
/// trusting nobody.
impl Serialize for LaneTrust {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => s.serialize_str("any"),
            Self::Nobody => s.serialize_str("none"),
            Self::Pods(pods) => {
                let mut pods: Vec<&String> = pods.iter().collect();
                pods.sort_unstable();
                pods.serialize(s)
            }
        }
    }
}

/// Where the lane the caller claimed, and was not trusted with, came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrippedFrom {
    /// A lane header on the request (removed before it went on).
    Header,
    /// The caller's own inbound request (not used).
    Inherited,
}

impl StrippedFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Inherited => "inherited",
        }
    }
}

impl fmt::Display for StrippedFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lane a caller claimed and was not trusted with: what would have
/// decided the request had the caller been trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stripped {
    pub from: StrippedFrom,
    pub lane: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_trusted() {
        let gateway = LaneTrust::Pods(Arc::new(["gw-1".to_string(), "gw-2".to_string()].into()));
        // (policy, caller, trusted)
        let cases = [
            (&LaneTrust::Any, Some("client"), true),
            (&LaneTrust::Any, None, true),
            (&LaneTrust::Nobody, Some("gw-1"), false),
            (&LaneTrust::Nobody, None, false),
            (&gateway, Some("gw-1"), true),
            (&gateway, Some("gw-2"), true),
            (&gateway, Some("client"), false),
            // Names are whole: no prefix or case games.
            (&gateway, Some("gw-"), false),
            (&gateway, Some("GW-1"), false),
            // Not identified as a pod: a list trusts only pods.
            (&gateway, None, false),
            (&LaneTrust::Pods(Arc::default()), Some("gw-1"), false),
        ];
        for (policy, caller, trusted) in cases {
            assert_eq!(policy.trusts(caller), trusted, "{policy:?} {caller:?}");
        }
    }

    #[test]
    fn config_dump_shows_the_pods_sorted() {
        let pods = LaneTrust::Pods(Arc::new(["b".to_string(), "a".to_string()].into()));
        assert_eq!(serde_json::to_string(&pods).unwrap(), r#"["a","b"]"#);
        assert_eq!(
            serde_json::to_string(&LaneTrust::Nobody).unwrap(),
            r#""none""#
        );
    }
}

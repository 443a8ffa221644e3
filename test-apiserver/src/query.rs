//! Query strings and the selectors the test server understands.
use std::collections::BTreeMap;

use serde_json::Value;

pub(super) fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A namespaced collection's path (`/api/v1/namespaces/NS/pods`,
/// `/apis/GROUP/VERSION/namespaces/NS/PLURAL`) as the cluster-wide one and
/// the namespace; any other path as it is.
pub(super) fn collection(path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let at = parts.len().saturating_sub(3);
    match parts.get(at) {
        Some(&"namespaces") if at >= 2 => (
            format!("/{}/{}", parts[..at].join("/"), parts[at + 2]),
            Some(parts[at + 1].to_string()),
        ),
        _ => (path.to_string(), None),
    }
}

/// `labelSelector` and `fieldSelector` of equalities (`a=b,c=d`); the only
/// field selector supported is `spec.nodeName`. A namespaced collection's
/// path selects its namespace.
pub(super) struct Selector {
    labels: Vec<(String, String)>,
    fields: Vec<(String, String)>,
    namespace: Option<String>,
}

impl Selector {
    pub(super) fn new(query: &BTreeMap<String, String>) -> Self {
        let pairs = |key: &str| -> Vec<(String, String)> {
            query
                .get(key)
                .map(|s| {
                    s.split(',')
                        .filter_map(|p| p.split_once('='))
                        .map(|(k, v)| (k.trim_end_matches('=').to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            labels: pairs("labelSelector"),
            fields: pairs("fieldSelector"),
            namespace: None,
        }
    }

    pub(super) fn in_namespace(self, namespace: Option<String>) -> Self {
        Self { namespace, ..self }
    }

    pub(super) fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self
                .labels
                .iter()
                .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
            && self.fields.iter().all(|(k, v)| match k.as_str() {
                "spec.nodeName" => object["spec"]["nodeName"].as_str() == Some(v),
                other => panic!("field selector {other} not supported by the test server"),
            })
    }
}

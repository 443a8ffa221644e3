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

/// `labelSelector` and `fieldSelector` of equalities (`a=b,c=d`); the only
/// field selector supported is `spec.nodeName`.
pub(super) struct Selector {
    labels: Vec<(String, String)>,
    fields: Vec<(String, String)>,
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
        }
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
            && self.fields.iter().all(|(k, v)| match k.as_str() {
                "spec.nodeName" => object["spec"]["nodeName"].as_str() == Some(v),
                other => panic!("field selector {other} not supported by the test server"),
            })
    }
}

//! Compiled rules and their evaluation.
//!
//! Semantics (also in README.md, "Rules"):
//! * A key can have several values (repeated headers, query keys, cookies).
//!   A positive operator (`=`, `>`, `in`, `prefix`, `regex`, `mod100`, ...)
//!   matches when **any** value matches; `!=` and `not_in` match when **no**
//!   value equals / is in the list.
//! * A missing key matches only `!=`, `not_in` and `exists: false`.
//! * `=`, `!=`, `>`, `>=`, `<`, `<=` compare as numbers when both sides parse
//!   as numbers (integers exactly, at any size; decimals as f64), else as
//!   strings (byte order).
//! * `mod100` takes the key's integer value (any size, sign allowed) modulo
//!   100 in the mathematical sense (`-1 mod100 = 99`); a non-integer does not
//!   match.
//! * `percentage` without a source draws at random per request; with a
//!   source it hashes the key's value (FNV-1a), so one user always gets the
//!   same answer on every node and after every restart.
use std::{
    cmp::Ordering,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering as AtomicOrdering},
    },
};

use super::{Mode, RequestView, request::form_pairs};

#[derive(Debug, Clone)]
pub enum Source {
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    /// Dotted JSON path (`user.id`, `items.0.sku`) or form field.
    Body(String),
    Host,
    Path,
    Method,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "=" | "==" => Self::Eq,
            "!=" => Self::Ne,
            ">" => Self::Gt,
            ">=" => Self::Ge,
            "<" => Self::Lt,
            "<=" => Self::Le,
            _ => return None,
        })
    }

    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Self::Eq => ordering == Ordering::Equal,
            Self::Ne => ordering != Ordering::Equal,
            Self::Gt => ordering == Ordering::Greater,
            Self::Ge => ordering != Ordering::Less,
            Self::Lt => ordering == Ordering::Less,
            Self::Le => ordering != Ordering::Greater,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Matcher {
    Compare(Cmp, String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists(bool),
    Prefix(String),
    Regex(regex::Regex),
    /// Share of requests in percent, 0..=100.
    Percentage(f64),
    Mod100(Cmp, i64),
}

#[derive(Debug, Clone)]
pub struct Condition {
    /// `None` only for a random percentage.
    pub source: Option<Source>,
    pub matcher: Matcher,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub service: String,
    pub lane: String,
    pub mode: Mode,
    pub priority: i32,
    pub enabled: bool,
    pub conditions: Vec<Condition>,
}

impl Rule {
    /// `random` is a uniform draw in [0, 1) for this request.
    pub fn matches(&self, request: &RequestView<'_>, random: f64) -> bool {
        let mut results = self.conditions.iter().map(|c| c.matches(request, random));
        match self.mode {
            Mode::Any => results.any(|m| m),
            Mode::All => results.all(|m| m),
        }
    }

    pub fn reads_body(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| matches!(c.source, Some(Source::Body(_))))
    }
}

impl Condition {
    pub fn matches(&self, request: &RequestView<'_>, random: f64) -> bool {
        let values = match &self.source {
            None => {
                return matches!(self.matcher, Matcher::Percentage(share) if random * 100.0 < share);
            }
            Some(source) => values_of(source, request),
        };
        if values.is_empty() {
            return matches!(
                self.matcher,
                Matcher::Compare(Cmp::Ne, _) | Matcher::NotIn(_) | Matcher::Exists(false)
            );
        }
        match &self.matcher {
            Matcher::Exists(want) => *want,
            Matcher::Compare(Cmp::Ne, expected) => values
                .iter()
                .all(|v| compare(v, expected) != Ordering::Equal),
            Matcher::Compare(cmp, expected) => {
                values.iter().any(|v| cmp.holds(compare(v, expected)))
            }
            Matcher::In(list) => values
                .iter()
                .any(|v| list.iter().any(|item| compare(v, item) == Ordering::Equal)),
            Matcher::NotIn(list) => values
                .iter()
                .all(|v| list.iter().all(|item| compare(v, item) != Ordering::Equal)),
            Matcher::Prefix(prefix) => values.iter().any(|v| v.starts_with(prefix.as_str())),
            Matcher::Regex(re) => values.iter().any(|v| re.is_match(v)),
            Matcher::Percentage(share) => values.iter().any(|v| stable_bucket(v) < share * 100.0),
            Matcher::Mod100(cmp, rhs) => values
                .iter()
                .any(|v| mod100(v).is_some_and(|m| cmp.holds(m.cmp(rhs)))),
        }
    }
}

fn values_of<'a>(source: &Source, request: &RequestView<'a>) -> Vec<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    match source {
        Source::Header(name) => request.header_values(name).map(Cow::Borrowed).collect(),
        Source::Cookie(name) => request
            .cookie_values(name)
            .into_iter()
            .map(Cow::Borrowed)
            .collect(),
        Source::Query(name) => request
            .query_values(name)
            .into_iter()
            .map(Cow::Owned)
            .collect(),
        Source::Body(path) => body_values(request, path)
            .into_iter()
            .map(Cow::Owned)
            .collect(),
        Source::Host => request
            .host
            .map(|h| Cow::Borrowed(strip_port(h)))
            .into_iter()
            .collect(),
        Source::Path => vec![Cow::Borrowed(request.path)],
        Source::Method => vec![Cow::Borrowed(request.method)],
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn body_values(request: &RequestView<'_>, path: &str) -> Vec<String> {
    let body = request.body;
    if body.is_empty() {
        return Vec::new();
    }
    let content_type = request.content_type().unwrap_or("").to_ascii_lowercase();
    if content_type.contains("application/x-www-form-urlencoded") {
        // A field cut by the bound would give a wrong value: drop the tail.
        let complete = if request.body_truncated {
            match body.iter().rposition(|b| *b == b'&') {
                Some(i) => &body[..i],
                None => return Vec::new(),
            }
        } else {
            body
        };
        return form_pairs(complete)
            .filter(|(k, _)| k == path)
            .map(|(_, v)| v)
            .collect();
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut node = &json;
    for part in path.split('.') {
        node = match node {
            serde_json::Value::Object(map) => match map.get(part) {
                Some(next) => next,
                None => return Vec::new(),
            },
            serde_json::Value::Array(items) => {
                match part.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(next) => next,
                    None => return Vec::new(),
                }
            }
            _ => return Vec::new(),
        };
    }
    match node {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Number(n) => vec![n.to_string()],
        serde_json::Value::Bool(b) => vec![b.to_string()],
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An integer written in decimal, at any size: (negative, digits without
/// leading zeros).
fn parse_integer(text: &str) -> Option<(bool, &str)> {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    Some((negative && digits != "0", digits))
}

fn compare_integers(a: (bool, &str), b: (bool, &str)) -> Ordering {
    let magnitude = a.1.len().cmp(&b.1.len()).then_with(|| a.1.cmp(b.1));
    match (a.0, b.0) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    }
}

fn parse_decimal(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Numbers compare as numbers, anything else as strings.
fn compare(value: &str, expected: &str) -> Ordering {
    if let (Some(a), Some(b)) = (parse_integer(value), parse_integer(expected)) {
        return compare_integers(a, b);
    }
    if let (Some(a), Some(b)) = (parse_decimal(value), parse_decimal(expected)) {
        return a.partial_cmp(&b).unwrap_or(Ordering::Equal);
    }
    value.cmp(expected)
}

fn mod100(text: &str) -> Option<i64> {
    let (negative, digits) = parse_integer(text)?;
    let last_two: i64 = digits[digits.len().saturating_sub(2)..].parse().ok()?;
    Some(if negative {
        (100 - last_two) % 100
    } else {
        last_two
    })
}

/// A stable bucket in [0, 10000) for a key: FNV-1a, the same everywhere.
fn stable_bucket(key: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % 10_000) as f64
}

/// All rules in force, grouped by the service they guard and sorted by
/// priority (then by order of appearance). Cheap to share: the daemon swaps
/// in a new set on every change.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<RuleEntry>,
}

#[derive(Debug)]
struct RuleEntry {
    rule: Rule,
    hits: Arc<AtomicU64>,
}

impl RuleSet {
    /// `previous` carries hit counts over for rules that keep their name.
    pub fn new(rules: Vec<Rule>, previous: Option<&RuleSet>) -> Self {
        let mut rules: Vec<RuleEntry> = rules
            .into_iter()
            .map(|rule| {
                let hits = previous
                    .and_then(|p| p.rules.iter().find(|e| e.rule.name == rule.name))
                    .map(|e| e.hits.clone())
                    .unwrap_or_default();
                RuleEntry { rule, hits }
            })
            .collect();
        // Stable sort: equal priorities keep file order.
        rules.sort_by_key(|e| e.rule.priority);
        Self { rules }
    }

    /// First enabled rule of `service` that matches, counting the hit.
    pub fn evaluate(&self, service: &str, request: &RequestView<'_>, random: f64) -> Option<&Rule> {
        let entry = self
            .rules
            .iter()
            .filter(|e| e.rule.enabled && e.rule.service == service)
            .find(|e| e.rule.matches(request, random))?;
        entry.hits.fetch_add(1, AtomicOrdering::Relaxed);
        Some(&entry.rule)
    }

    /// Does any enabled rule of `service` read the body?
    pub fn reads_body(&self, service: &str) -> bool {
        self.rules
            .iter()
            .any(|e| e.rule.enabled && e.rule.service == service && e.rule.reads_body())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Rule, u64)> {
        self.rules
            .iter()
            .map(|e| (&e.rule, e.hits.load(AtomicOrdering::Relaxed)))
    }
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;

//! Rules as written in the cluster file or a rules file, and their checks.
use serde::{Deserialize, Serialize};

use super::eval::{Cmp, Condition, Matcher, Rule, Source};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Any condition matches (OR).
    #[default]
    Any,
    /// Every condition matches (AND).
    All,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// Destination service the rule guards.
    pub service: String,
    pub lane: String,
    #[serde(default)]
    pub mode: Mode,
    /// Lower runs first; ties keep file order.
    #[serde(default = "default_priority")]
    pub priority: i32,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    pub conditions: Vec<ConditionSpec>,
}

fn default_priority() -> i32 {
    100
}

fn default_enabled() -> bool {
    true
}

/// One condition as written. Which fields are needed depends on `op`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// header | cookie | query | body | host | path | method. Optional only
    /// for a random `percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Key for header, cookie, query and body (a dotted JSON path or a form
    /// field); not used for host, path and method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<serde_yaml::Value>>,
    /// Comparison of `mod100`: = != > >= < <=.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmp: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("rule {rule:?}, {field}: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub field: String,
    pub reason: String,
}

impl RuleSpec {
    pub fn compile(&self) -> Result<Rule, RuleError> {
        let err = |field: String, reason: String| RuleError {
            rule: self.name.clone(),
            field,
            reason,
        };
        if self.name.trim().is_empty() {
            return Err(err("name".into(), "a rule needs a name".into()));
        }
        if self.conditions.is_empty() {
            return Err(err(
                "conditions".into(),
                "a rule needs at least one condition".into(),
            ));
        }
        let conditions = self
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                compile_condition(c).map_err(|(f, r)| err(format!("conditions[{i}].{f}"), r))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rule {
            name: self.name.clone(),
            service: self.service.clone(),
            lane: self.lane.clone(),
            mode: self.mode,
            priority: self.priority,
            enabled: self.enabled,
            conditions,
        })
    }
}

/// Rule names identify rules in `tagger rules ...` and in decisions.
pub fn check_unique_names(rules: &[RuleSpec]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for rule in rules {
        if !seen.insert(rule.name.as_str()) {
            return Err(format!("rule name {:?} is used twice", rule.name));
        }
    }
    Ok(())
}

type FieldError = (&'static str, String);

fn compile_condition(spec: &ConditionSpec) -> Result<Condition, FieldError> {
    // Whatever the operator (one may not read them), `value` and `values`
    // hold only what a rule can compare: text, finite numbers, booleans.
    // The rules in force are listed as JSON (`tagger rules list`, the
    // config dump), which has no NaN or infinity and no non-text map keys:
    // a rule with `value: .nan`, or a map with a list for a key in an unused
    // `values`, was accepted and then broke the listing, or came back from
    // it as another rule. Seen with the `rules` fuzz target's check that an
    // accepted rule survives the listing (fuzz/regressions/rules/listing-*).
    if let Some(value) = &spec.value
        && as_text(value).is_none()
    {
        return Err((
            "value",
            format!("expected a string, number or boolean, got {}", show(value)),
        ));
    }
    if let Some(bad) = spec.values.iter().flatten().find(|v| as_text(v).is_none()) {
        return Err((
            "values",
            format!("expected strings, numbers or booleans, got {}", show(bad)),
        ));
    }
    let op = spec.op.trim();
    let source = match spec.source.as_deref() {
        None if op == "percentage" => None,
        None => {
            return Err((
                "source",
                "missing (header, cookie, query, body, host, path or method)".into(),
            ));
        }
        Some(s) => Some(parse_source(s, spec.name.as_deref())?),
    };
    let matcher = match op {
        "=" | "==" | "!=" | ">" | ">=" | "<" | "<=" => {
            Matcher::Compare(Cmp::parse(op).expect("listed above"), scalar(spec)?)
        }
        "in" => Matcher::In(list(spec)?),
        "not_in" | "notin" | "not in" => Matcher::NotIn(list(spec)?),
        "exists" => Matcher::Exists(match &spec.value {
            None => true,
            Some(serde_yaml::Value::Bool(b)) => *b,
            Some(other) => {
                return Err((
                    "value",
                    format!("exists takes true or false, not {}", show(other)),
                ));
            }
        }),
        "prefix" => Matcher::Prefix(scalar(spec)?),
        "regex" => {
            let pattern = scalar(spec)?;
            let re = regex::Regex::new(&pattern)
                .map_err(|e| ("value", format!("regex does not compile: {e}")))?;
            Matcher::Regex(re)
        }
        "percentage" => {
            let share = number(spec)?;
            if !(0.0..=100.0).contains(&share) {
                return Err((
                    "value",
                    format!("percentage must be within 0..100, not {share}"),
                ));
            }
            Matcher::Percentage(share)
        }
        "mod100" => {
            let cmp_text = spec.cmp.as_deref().unwrap_or("=");
            let cmp = Cmp::parse(cmp_text)
                .ok_or_else(|| ("cmp", format!("{cmp_text:?} is not one of = != > >= < <=")))?;
            let value = number(spec)?;
            if value.fract() != 0.0 || !(0.0..100.0).contains(&value) {
                return Err((
                    "value",
                    format!("mod100 compares with a whole number 0..99, not {value}"),
                ));
            }
            Matcher::Mod100(cmp, value as i64)
        }
        other => {
            return Err((
                "op",
                format!(
                    "{other:?} is not an operator (= != > >= < <= in not_in exists prefix regex percentage mod100)"
                ),
            ));
        }
    };
    if matches!(source, Some(Source::Path | Source::Host | Source::Method)) && spec.name.is_some() {
        return Err(("name", "host, path and method take no name".into()));
    }
    Ok(Condition { source, matcher })
}

fn parse_source(source: &str, name: Option<&str>) -> Result<Source, FieldError> {
    let need_name = |what: &str| -> Result<String, FieldError> {
        match name {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            _ => Err((
                "name",
                format!("a {what} condition needs the {what}'s name"),
            )),
        }
    };
    Ok(match source {
        "header" => Source::Header(
            http::HeaderName::from_bytes(need_name("header")?.as_bytes()).map_err(|_| {
                (
                    "name",
                    format!("{:?} is not a valid header name", name.unwrap_or_default()),
                )
            })?,
        ),
        "cookie" => Source::Cookie(need_name("cookie")?),
        "query" | "parameter" | "param" => Source::Query(need_name("query")?),
        "body" => Source::Body(need_name("body")?),
        "host" => Source::Host,
        "path" => Source::Path,
        "method" => Source::Method,
        other => {
            return Err((
                "source",
                format!(
                    "{other:?} is not a source (header, cookie, query, body, host, path, method)"
                ),
            ));
        }
    })
}

fn show(value: &serde_yaml::Value) -> String {
    serde_yaml::to_string(value)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn as_text(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        // NaN and infinity are no value to compare with (and JSON has none).
        serde_yaml::Value::Number(n) if n.is_nan() || n.is_infinite() => None,
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn scalar(spec: &ConditionSpec) -> Result<String, FieldError> {
    let value = spec
        .value
        .as_ref()
        .ok_or(("value", format!("operator {} needs a value", spec.op)))?;
    as_text(value).ok_or((
        "value",
        format!("expected a string, number or boolean, got {}", show(value)),
    ))
}

fn number(spec: &ConditionSpec) -> Result<f64, FieldError> {
    let text = scalar(spec)?;
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or(("value", format!("{text:?} is not a number")))
}

fn list(spec: &ConditionSpec) -> Result<Vec<String>, FieldError> {
    let values = spec.values.as_ref().ok_or((
        "values",
        format!("operator {} needs a list `values:`", spec.op),
    ))?;
    values
        .iter()
        .map(|v| {
            as_text(v).ok_or((
                "values",
                format!("expected strings, numbers or booleans, got {}", show(v)),
            ))
        })
        .collect()
}

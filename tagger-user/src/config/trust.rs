//! `lane_header_from:` of a service (SPEC.md G, "trust"): whose lane a
//! request to the service may arrive in. In the cluster file it is `any`,
//! `none` or a list of service names; in Kubernetes the Service annotation
//! `tagger.io/lane-header-from` says the same as one string
//! (`crate::kubernetes::convert::lane_header_from`).
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Which callers of a service may put a request in a lane with a lane
/// header (or with the lane tagger inherits for them, which is the header
/// their own inbound request carried).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LaneHeaderFrom {
    /// Every caller: today's behaviour, and the default.
    #[default]
    Any,
    /// No caller: the lane header is removed before the request is decided
    /// and forwarded; the service's rules and the caller's sticky pod lane
    /// decide.
    Nobody,
    /// Only callers that tagger identifies as pods of these services (names
    /// as the source writes them: the file's, or `namespace/name`).
    Services(Vec<String>),
}

/// What is wrong with a `lane_header_from` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneHeaderFromError {
    /// A word that is not a keyword. In the file a single service name
    /// must still be a list, so that `[any]` (a service named `any`) and
    /// `any` never mean each other.
    #[error("{0:?} is neither `any` nor `none`; to trust the pods of a service, list it: [{0}]")]
    NotAKeyword(String),
    #[error("an empty list trusts no caller: write `none`")]
    Empty,
    #[error("{name:?} is not a service name: {message}")]
    BadName { name: String, message: String },
    #[error("service {0:?} is listed twice")]
    Duplicate(String),
    #[error("unknown service {name:?} (services: {known})")]
    UnknownService { name: String, known: String },
}

impl LaneHeaderFrom {
    /// Whether this is the default (and so left out of what is written).
    pub fn is_any(&self) -> bool {
        *self == Self::Any
    }

    /// A list of service names, each a valid name and listed once.
    pub fn services(names: Vec<String>) -> Result<Self, LaneHeaderFromError> {
        if names.is_empty() {
            return Err(LaneHeaderFromError::Empty);
        }
        for (i, name) in names.iter().enumerate() {
            super::check_name(name).map_err(|message| LaneHeaderFromError::BadName {
                name: name.clone(),
                message,
            })?;
            if names[..i].contains(name) {
                return Err(LaneHeaderFromError::Duplicate(name.clone()));
            }
        }
        Ok(Self::Services(names))
    }

    /// The annotation's form: `any`, `none`, or service names separated by
    /// commas (`gateway, web`).
    pub fn parse_annotation(value: &str) -> Result<Self, LaneHeaderFromError> {
        match value.trim() {
            "any" => Ok(Self::Any),
            "none" => Ok(Self::Nobody),
            list => Self::services(
                list.split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
        }
    }

    /// The listed services that are not in `known` (none for `any` and
    /// `none`), as the first error.
    pub fn check_known<'a>(
        &self,
        known: impl Fn(&str) -> bool,
        all: impl Iterator<Item = &'a str>,
    ) -> Result<(), LaneHeaderFromError> {
        let Self::Services(names) = self else {
            return Ok(());
        };
        match names.iter().find(|name| !known(name)) {
            None => Ok(()),
            Some(name) => {
                let mut all: Vec<&str> = all.collect();
                all.sort_unstable();
                Err(LaneHeaderFromError::UnknownService {
                    name: name.clone(),
                    known: all.join(", "),
                })
            }
        }
    }
}

impl fmt::Display for LaneHeaderFrom {
    /// The annotation's form, also what `config-dump` and logs show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Nobody => f.write_str("none"),
            Self::Services(names) => f.write_str(&names.join(",")),
        }
    }
}

impl Serialize for LaneHeaderFrom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => s.serialize_str("any"),
            Self::Nobody => s.serialize_str("none"),
            Self::Services(names) => names.serialize(s),
        }
    }
}

/// `any`, `none`, or a list of names; anything else is refused with what
/// was expected (serde's untagged enums would only say "did not match").
impl<'de> Deserialize<'de> for LaneHeaderFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = LaneHeaderFrom;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`any`, `none` or a list of service names")
            }

            fn visit_str<E: de::Error>(self, word: &str) -> Result<Self::Value, E> {
                match word {
                    "any" => Ok(LaneHeaderFrom::Any),
                    "none" => Ok(LaneHeaderFrom::Nobody),
                    other => Err(E::custom(LaneHeaderFromError::NotAKeyword(other.into()))),
                }
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                LaneHeaderFrom::services(names).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_values() {
        let names =
            |n: &[&str]| LaneHeaderFrom::Services(n.iter().map(|s| s.to_string()).collect());
        let cases: [(&str, Result<LaneHeaderFrom, LaneHeaderFromError>); 9] = [
            ("any", Ok(LaneHeaderFrom::Any)),
            (" none ", Ok(LaneHeaderFrom::Nobody)),
            ("gateway", Ok(names(&["gateway"]))),
            ("gateway, web", Ok(names(&["gateway", "web"]))),
            ("gateway,", Ok(names(&["gateway"]))),
            ("", Err(LaneHeaderFromError::Empty)),
            (" , ", Err(LaneHeaderFromError::Empty)),
            ("web,web", Err(LaneHeaderFromError::Duplicate("web".into()))),
            (
                "Gateway",
                Err(LaneHeaderFromError::BadName {
                    name: "Gateway".into(),
                    message: "\"Gateway\" is not a valid name (lowercase letters, digits and \
                              '-', at most 63)"
                        .into(),
                }),
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                LaneHeaderFrom::parse_annotation(value),
                expected,
                "{value:?}"
            );
        }
    }

    #[test]
    fn shown_as_the_annotation_and_written_as_the_file() {
        let list = LaneHeaderFrom::Services(vec!["gateway".into(), "web".into()]);
        assert_eq!(list.to_string(), "gateway,web");
        assert_eq!(LaneHeaderFrom::Nobody.to_string(), "none");
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"["gateway","web"]"#
        );
        assert_eq!(
            serde_json::to_string(&LaneHeaderFrom::Nobody).unwrap(),
            r#""none""#
        );
    }
}

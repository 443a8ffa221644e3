//! The rule language: conditions on a request that put it in a lane when it
//! goes to a given service.
//!
//! `spec` is what users write (YAML); `compile` checks it once and turns it
//! into [`Rule`], which `eval` runs against a [`RequestView`] on every request
//! without allocating or parsing anything again.
mod eval;
mod request;
mod spec;

pub use eval::{Cmp, Condition, Matcher, Rule, RuleSet, Source};
pub use request::RequestView;
pub use spec::{ConditionSpec, Mode, RuleError, RuleSpec, check_unique_names};

//! Property tests of the rule language and of the inbound header scanner.
//!
//! Rules and requests are drawn from one small vocabulary of keys and
//! values. Drawn independently from the whole space, as they once were, only
//! about 2% of the rules compiled (each of up to three conditions had to hit
//! a valid source, name, operator and value shape by chance) and a request
//! almost never carried a key a rule looks at, so `evaluate` saw hardly more
//! than "missing key". So each run counts what it reached, and fails when too
//! few rules compiled or when a source never both matched and missed.
//!
//! Beyond "never panics", evaluation is checked against two facts that hold
//! for every request: `RuleSet::evaluate` agrees with the rule's own
//! `matches`, and negating every condition of a rule (`=`/`!=`,
//! `in`/`not_in`, `exists`) and swapping any/all gives exactly the opposite
//! answer (De Morgan: a missing key and several values per key included).
mod rules_gen;
mod scan_gen;

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
};

use proptest::{prelude::*, sample::Index, test_runner::TestRunner};
use tagger::{
    propagation::scan::{Scan, scan},
    rules::{Cmp, Matcher, RuleSet, Source},
};

use rules_gen::*;
use scan_gen::*;

/// What a run of the rule property reached.
#[derive(Default)]
struct Reached {
    cases: Cell<u32>,
    compiled: Cell<u32>,
    matched: Cell<u32>,
    missed: Cell<u32>,
    negations: Cell<u32>,
    /// How often a condition with a positive operator on a source (for
    /// body, on a body of a kind) matched and missed.
    outcomes: RefCell<BTreeMap<(&'static str, bool), u32>>,
}

fn bump(counter: &Cell<u32>) {
    counter.set(counter.get() + 1);
}

#[test]
fn rules_compile_and_evaluate_over_varied_requests() {
    let reached = Reached::default();
    let mut runner = TestRunner::new(config(2000));
    let result = runner.run(
        &(rule_spec(), request(), 0.0f64..1.0),
        |(spec, request, random)| {
            bump(&reached.cases);
            let Ok(rule) = spec.compile() else {
                return Ok(());
            };
            bump(&reached.compiled);
            let rules = RuleSet::new(vec![rule.clone()], None);
            let headers = request.header_map();
            let view = request.view(&headers);
            let matches = rule.matches(&view, random);
            let chosen = rules.evaluate("s", &view, random);
            prop_assert_eq!(chosen.is_some(), rule.enabled && matches);
            prop_assert!(rules.evaluate("other", &view, random).is_none());
            bump(if chosen.is_some() {
                &reached.matched
            } else {
                &reached.missed
            });
            if let Some(opposite) = negated(&spec) {
                let opposite = opposite.compile().expect("the negation of a valid rule");
                prop_assert_eq!(opposite.matches(&view, random), !matches);
                bump(&reached.negations);
            }
            // Each condition on its own: what its source held and whether
            // it matched. A missing key matches `!=`, `not_in` and
            // `exists: false`, so only the other operators tell that a
            // source's values were there and reached.
            for condition in &rule.conditions {
                let positive = !matches!(
                    condition.matcher,
                    Matcher::Compare(Cmp::Ne, _) | Matcher::NotIn(_) | Matcher::Exists(false)
                );
                let source = match (&condition.source, request.body_kind) {
                    (None, _) => continue,
                    (_, _) if !positive => continue,
                    (Some(Source::Header(_)), _) => "header",
                    (Some(Source::Cookie(_)), _) => "cookie",
                    (Some(Source::Query(_)), _) => "query",
                    (Some(Source::Body(_)), BodyKind::Json) => "body (json)",
                    (Some(Source::Body(_)), BodyKind::Form) => "body (form)",
                    (Some(Source::Body(_)), _) => "body (other)",
                    (Some(Source::Host), _) => "host",
                    (Some(Source::Path), _) => "path",
                    (Some(Source::Method), _) => "method",
                };
                *reached
                    .outcomes
                    .borrow_mut()
                    .entry((source, condition.matches(&view, random)))
                    .or_default() += 1;
            }
            Ok(())
        },
    );
    if let Err(error) = result {
        panic!("{error}");
    }
    let (cases, compiled) = (reached.cases.get(), reached.compiled.get());
    let (matched, missed) = (reached.matched.get(), reached.missed.get());
    eprintln!(
        "{cases} cases: {compiled} compiled and evaluated, {matched} matched, {missed} missed, \
         {} negations checked",
        reached.negations.get()
    );
    assert!(
        f64::from(compiled) >= 0.3 * f64::from(cases),
        "only {compiled} of {cases} rules compiled"
    );
    // Both outcomes, each a real share of the run.
    for (what, count) in [("matched", matched), ("missed", missed)] {
        assert!(
            f64::from(count) >= 0.05 * f64::from(compiled),
            "{what} {count} times of {compiled}"
        );
    }
    assert!(reached.negations.get() >= cases / 20);
    // Every source, and bodies in JSON and form, both matched and missed
    // under a positive operator.
    let outcomes = reached.outcomes.borrow();
    eprintln!("outcomes per source: {outcomes:?}");
    for source in [
        "header",
        "cookie",
        "query",
        "body (json)",
        "body (form)",
        "host",
        "path",
        "method",
    ] {
        for outcome in [true, false] {
            assert!(
                outcomes.get(&(source, outcome)).is_some_and(|n| *n >= 5),
                "a {source} condition {} fewer than 5 times: {outcomes:?}",
                if outcome { "matched" } else { "missed" }
            );
        }
    }
}

#[test]
fn the_scanner_reads_near_valid_requests_split_anywhere() {
    let mut runner = TestRunner::new(config(2000));
    let cuts = prop::collection::vec(any::<Index>(), 3);
    let result = runner.run(&(near_valid_request(), cuts), |(request, cuts)| {
        with_wanted(|wanted| {
            let whole = &request.bytes;
            match scan(whole, wanted) {
                Scan::Complete(context) => {
                    prop_assert_eq!(context.lane.as_deref(), Some(request.lane.as_str()));
                }
                other => prop_assert!(false, "{:?}: {:?}", String::from_utf8_lossy(whole), other),
            }
            // What a read cut short shows: never a verdict before the block
            // ends, so the reader waits for more bytes.
            for cut in cuts {
                let cut = cut.index(request.header_end);
                prop_assert_eq!(
                    scan(&whole[..cut], wanted),
                    Scan::Partial,
                    "cut at {} of {:?}",
                    cut,
                    String::from_utf8_lossy(whole)
                );
            }
            Ok(())
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn the_header_scanner_never_panics() {
    let inputs = prop_oneof![
        // Arbitrary bytes, alone or after a valid request line.
        (prop::collection::vec(any::<u8>(), 0..600), any::<bool>()).prop_map(|(bytes, prefix)| {
            let mut input = if prefix {
                b"GET / HTTP/1.1\r\n".to_vec()
            } else {
                Vec::new()
            };
            input.extend(bytes);
            input
        }),
        // Near-valid requests with bytes overwritten anywhere, and half of
        // them cut anywhere.
        (
            near_valid_request(),
            prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
            prop::option::of(any::<Index>()),
        )
            .prop_map(|(request, flips, cut)| {
                let mut bytes = request.bytes;
                for (at, byte) in flips {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            }),
    ];
    let complete = Cell::new(0u32);
    let mut runner = TestRunner::new(config(2000));
    let result = runner.run(&inputs, |input| {
        if let Scan::Complete(_) = with_wanted(|wanted| scan(&input, wanted)) {
            bump(&complete);
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    // The header-reading code ran to the end of a block, not only the
    // request-line check (about a fifth of the inputs do).
    eprintln!("{} complete header blocks of 2000", complete.get());
    assert!(complete.get() >= 200, "{} complete blocks", complete.get());
}

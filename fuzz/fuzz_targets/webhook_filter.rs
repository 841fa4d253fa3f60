//! Fuzz target: arbitrary bytes → a `[[outbound.relay.when]]` filter and a webhook body →
//! `Filter::compile` and `Filter::check`, plus the JSON Pointer selection on its own.
//!
//! Input format (so the seed corpus stays readable): line 1 the pointer (or `@Header-Name` for a
//! header selector), line 2 `KIND VALUE` with KIND one of `equals`, `one_of` (values split on
//! `,`), `prefix`, `contains`, `glob` (split on `,`), line 3 a header line `Name: value`, the rest
//! the body. Checked, besides "never panics": a filter that holds for every selected value
//! (`All`) holds for some (`Any`); a reason never quotes the body (it reaches logs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgbroker::config::WhenSpec;
use wgbroker::relay::{Filter, Quantifier, Subject};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(4, '\n');
    let selector = lines.next().unwrap_or_default();
    let condition = lines.next().unwrap_or_default();
    let header = lines.next().unwrap_or_default();
    let body = lines.next().unwrap_or_default();

    let mut w = WhenSpec::default();
    match selector.strip_prefix('@') {
        Some(h) => w.header = Some(h.to_owned()),
        None => w.pointer = Some(selector.to_owned()),
    }
    let (kind, value) = condition.split_once(' ').unwrap_or((condition, ""));
    let list = || value.split(',').map(str::to_owned).collect::<Vec<_>>();
    match kind {
        "equals" => w.equals = Some(value.to_owned()),
        "one_of" => w.one_of = Some(list()),
        "prefix" => w.prefix = Some(value.to_owned()),
        "contains" => w.contains = Some(value.to_owned()),
        "glob" => w.glob = Some(list()),
        _ => {}
    }
    let Ok(filter) = Filter::compile(&w) else {
        return;
    };
    let (hname, hvalue) = header.split_once(':').unwrap_or((header, ""));
    let headers: [(&str, &[u8]); 1] = [(hname, hvalue.as_bytes())];
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let subject = Subject {
        headers: &headers,
        json: json.as_ref(),
    };
    let any = filter.check(subject, Quantifier::Any);
    let all = filter.check(subject, Quantifier::All);
    if all.is_ok() {
        assert!(any.is_ok(), "All holds but Any does not: {any:?}");
    }
    // The reason names the selector and the condition kind; past those, no body text.
    for reason in [any.err(), all.err()].into_iter().flatten() {
        let rest = reason.replace(&filter.describe(), "");
        if body.len() >= 16 {
            assert!(!rest.contains(body), "the reason quotes the body: {reason}");
        }
    }
});

//! `[[allow.body]]` evaluation: arbitrary constraints compiled into a rule, checked against an
//! arbitrary request body (`Rule::check_body`, what the broker runs before it forwards a body).
//!
//! Input format (so the seed corpus stays readable): up to three constraint lines `POINTER KIND
//! VALUE` (KIND one of `equals`, `one_of`, `prefix`, `contains`, `glob`; lists split on `,`),
//! a line `---`, then the body. Checked, besides "never panics": a body that is not JSON is
//! denied; a denial's reason never quotes the body; a body that passes every constraint of a
//! rule also passes each constraint alone (constraints are a conjunction).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgbroker::allowlist::{Allowlist, LogFlags, RuleOrigin, RuleSpec};
use wgbroker::config::WhenSpec;

fn when(line: &str) -> WhenSpec {
    let mut parts = line.splitn(3, ' ');
    let pointer = parts.next().unwrap_or_default();
    let kind = parts.next().unwrap_or_default();
    let value = parts.next().unwrap_or_default();
    let list = || value.split(',').map(str::to_owned).collect::<Vec<_>>();
    let mut w = WhenSpec {
        pointer: Some(pointer.to_owned()),
        ..WhenSpec::default()
    };
    match kind {
        "equals" => w.equals = Some(value.to_owned()),
        "one_of" => w.one_of = Some(list()),
        "prefix" => w.prefix = Some(value.to_owned()),
        "contains" => w.contains = Some(value.to_owned()),
        "glob" => w.glob = Some(list()),
        _ => {}
    }
    w
}

fn rule(body: Vec<WhenSpec>) -> Option<Allowlist> {
    let spec = RuleSpec {
        url: "https://ghe.example.com/api/v3/repos/:o/:r/git/trees".into(),
        methods: vec!["POST".into()],
        set_request_headers: Vec::new(),
        token_pool: None,
        remove_response_headers: Vec::new(),
        log: LogFlags::default(),
        path_files: Vec::new(),
        query: Vec::new(),
        headers: Vec::new(),
        body,
        origin: RuleOrigin::User { index: 0 },
    };
    Allowlist::compile(vec![spec]).ok()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (constraints, body) = text.split_once("\n---\n").unwrap_or((&text, ""));
    let whens: Vec<WhenSpec> = constraints.lines().take(3).map(when).collect();
    if whens.is_empty() {
        return;
    }
    let Some(list) = rule(whens.clone()) else {
        return;
    };
    let r = &list.rules()[0];
    assert!(r.checks_body());
    let verdict = r.check_body(body.as_bytes());
    if serde_json::from_str::<serde_json::Value>(body).is_err() {
        assert!(verdict.is_err(), "a body that is not JSON passed");
    }
    if let Err(reason) = &verdict {
        // Text the rule says whatever the body (its fixed messages, its selectors and values) may
        // contain the body by chance ("y: the request body is not JSO" did): not a quote.
        let fixed = [r.check_body(b"{}"), r.check_body(b"\x01")]
            .into_iter()
            .filter_map(Result::err)
            .collect::<Vec<_>>()
            .join("\n")
            + constraints;
        if body.len() >= 12 && !fixed.contains(body) {
            assert!(
                !reason.contains(body),
                "the reason quotes the body: {reason}"
            );
        }
    }
    if verdict.is_ok() {
        for w in whens {
            let alone = rule(vec![w]).expect("a constraint of a compiled rule compiles alone");
            assert!(
                alone.rules()[0].check_body(body.as_bytes()).is_ok(),
                "passes together but not alone"
            );
        }
    }
});

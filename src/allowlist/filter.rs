//! Conditions on a JSON body or a header: `[[outbound.relay.when]]` and `[[allow.body]]`.
//!
//! A [`Filter`] is a selector — a [`Pointer`] into the JSON body, or a header name — and exactly
//! one condition: `equals`, `one_of`, `prefix`, `contains` (substring) or `glob` (a list of globs
//! in the `path_files` dialect: `name`, `dir/name`, `**/name`, `*.ext`, `**/*.ext`; compiled by the
//! allowlist's `FileSet`, not a second glob engine).
//!
//! A selector can select several values (`/commits/*/message`, a repeated header). How they
//! combine is the caller's [`Quantifier`]: a relay's `when` holds when **some** selected value
//! satisfies it (an event is relevant when one of its commits is), a body constraint when
//! **every** selected value does (a commit may only create manifest files). Selecting nothing
//! never holds, under either quantifier. Strings compare as they are; numbers and booleans as their
//! JSON text (`equals = "42"`, `equals = "true"`); `null`, objects and arrays never satisfy a
//! condition.
//!
//! Reasons never quote a value from the body or a header: they reach log lines, which carry no
//! payload data.

use serde_json::Value;

use super::FileSet;
use super::pointer::{Pointer, scalar_text};
use super::spec::WhenSpec;

/// How the values a selector selects combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantifier {
    /// At least one selected value satisfies the condition (relay filters).
    Any,
    /// Every selected value does, and there is at least one (body constraints).
    All,
}

#[derive(Debug, Clone)]
enum Selector {
    Pointer(String, Pointer),
    Header(String),
}

#[derive(Debug, Clone)]
enum Condition {
    Equals(String),
    OneOf(Vec<String>),
    Prefix(String),
    Contains(String),
    Glob(FileSet),
}

impl Condition {
    fn name(&self) -> &'static str {
        match self {
            Condition::Equals(_) => "equals",
            Condition::OneOf(_) => "one_of",
            Condition::Prefix(_) => "prefix",
            Condition::Contains(_) => "contains",
            Condition::Glob(_) => "glob",
        }
    }

    fn holds(&self, v: &str) -> bool {
        match self {
            Condition::Equals(e) => v == e,
            Condition::OneOf(list) => list.iter().any(|e| e == v),
            Condition::Prefix(p) => v.starts_with(p.as_str()),
            Condition::Contains(c) => v.contains(c.as_str()),
            Condition::Glob(set) => set.matches_path(v.as_bytes()),
        }
    }
}

/// A compiled condition with its selector.
#[derive(Debug, Clone)]
pub struct Filter {
    selector: Selector,
    condition: Condition,
}

/// The input a filter looks at.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Request headers (name, value) as received.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The parsed body, when a pointer filter needs it (`None`: not JSON).
    pub json: Option<&'a Value>,
}

impl Filter {
    /// Compiles one `when`/`body` table; errors are `(key, message)` with the key relative to
    /// the table.
    pub fn compile(w: &WhenSpec) -> Result<Filter, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let selector = match (&w.pointer, &w.header) {
            (Some(p), None) => match Pointer::parse(p) {
                Ok(ptr) => Some(Selector::Pointer(p.clone(), ptr)),
                Err(e) => {
                    errors.push(("pointer".to_owned(), e));
                    None
                }
            },
            (None, Some(h)) => Some(Selector::Header(h.clone())),
            _ => {
                errors.push((
                    String::new(),
                    "expected exactly one of `pointer` (into the JSON body) or `header`".into(),
                ));
                None
            }
        };
        let given = [
            w.equals.is_some(),
            w.one_of.is_some(),
            w.prefix.is_some(),
            w.contains.is_some(),
            w.glob.is_some(),
        ];
        let condition = if given.iter().filter(|g| **g).count() != 1 {
            errors.push((
                String::new(),
                "expected exactly one of `equals`, `one_of`, `prefix`, `contains`, `glob`".into(),
            ));
            None
        } else if let Some(v) = &w.equals {
            Some(Condition::Equals(v.clone()))
        } else if let Some(v) = &w.one_of {
            if v.is_empty() {
                errors.push(("one_of".into(), "an empty list can never hold".into()));
            }
            Some(Condition::OneOf(v.clone()))
        } else if let Some(v) = &w.prefix {
            Some(Condition::Prefix(v.clone()))
        } else if let Some(v) = &w.contains {
            Some(Condition::Contains(v.clone()))
        } else if let Some(globs) = &w.glob {
            if globs.is_empty() {
                errors.push(("glob".into(), "an empty list can never hold".into()));
                None
            } else {
                match FileSet::compile(globs) {
                    Ok(set) => Some(Condition::Glob(set)),
                    Err(list) => {
                        errors.extend(list.into_iter().map(|m| ("glob".to_owned(), m)));
                        None
                    }
                }
            }
        } else {
            None
        };
        match (selector, condition) {
            (Some(selector), Some(condition)) if errors.is_empty() => Ok(Filter {
                selector,
                condition,
            }),
            _ => Err(errors),
        }
    }

    /// Whether the filter needs the body parsed as JSON.
    pub fn needs_json(&self) -> bool {
        matches!(self.selector, Selector::Pointer(..))
    }

    /// What the filter looks at and how, for reasons: `pointer /action one_of`.
    pub fn describe(&self) -> String {
        match &self.selector {
            Selector::Pointer(p, _) => format!("pointer {p:?} {}", self.condition.name()),
            Selector::Header(h) => format!("header {h} {}", self.condition.name()),
        }
    }

    /// Checks the filter; the error is the reason it does not hold (no value quoted).
    pub fn check(&self, subject: Subject<'_>, q: Quantifier) -> Result<(), String> {
        let mut selected = 0usize;
        let mut satisfied = 0usize;
        let mut count = |text: Option<&str>| {
            selected += 1;
            if text.is_some_and(|t| self.condition.holds(t)) {
                satisfied += 1;
            }
        };
        match &self.selector {
            Selector::Pointer(_, p) => {
                let Some(doc) = subject.json else {
                    return Err(format!("{}: the body is not JSON", self.describe()));
                };
                for v in p.select(doc) {
                    count(scalar_text(v).as_deref());
                }
            }
            Selector::Header(h) => {
                for (name, value) in subject.headers {
                    if name.eq_ignore_ascii_case(h) {
                        count(std::str::from_utf8(crate::http::trim_ows(value)).ok());
                    }
                }
            }
        }
        let holds = match q {
            Quantifier::Any => satisfied > 0,
            Quantifier::All => selected > 0 && satisfied == selected,
        };
        if holds {
            Ok(())
        } else if selected == 0 {
            Err(format!("{}: selects nothing", self.describe()))
        } else if q == Quantifier::All {
            Err(format!(
                "{}: {} of {selected} selected values do not satisfy it",
                self.describe(),
                selected - satisfied
            ))
        } else {
            Err(format!(
                "{}: none of {selected} selected values satisfies it",
                self.describe()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn when(pointer: &str) -> WhenSpec {
        WhenSpec {
            pointer: Some(pointer.to_owned()),
            ..WhenSpec::default()
        }
    }

    fn check(w: &WhenSpec, doc: &Value, q: Quantifier) -> Result<(), String> {
        Filter::compile(w).expect("compiles").check(
            Subject {
                headers: &[],
                json: Some(doc),
            },
            q,
        )
    }

    #[test]
    fn each_condition_kind() {
        let doc = json!({"action": "opened", "ref": "refs/heads/main", "n": 3,
                         "msg": "fix: [skip vendor] typo", "file": "web/package.json"});
        let cases = [
            (
                WhenSpec {
                    equals: Some("opened".into()),
                    ..when("/action")
                },
                true,
            ),
            (
                WhenSpec {
                    equals: Some("closed".into()),
                    ..when("/action")
                },
                false,
            ),
            (
                WhenSpec {
                    one_of: Some(vec!["x".into(), "opened".into()]),
                    ..when("/action")
                },
                true,
            ),
            (
                WhenSpec {
                    prefix: Some("refs/heads/".into()),
                    ..when("/ref")
                },
                true,
            ),
            (
                WhenSpec {
                    prefix: Some("refs/tags/".into()),
                    ..when("/ref")
                },
                false,
            ),
            (
                WhenSpec {
                    contains: Some("[skip vendor]".into()),
                    ..when("/msg")
                },
                true,
            ),
            (
                WhenSpec {
                    equals: Some("3".into()),
                    ..when("/n")
                },
                true,
            ),
            (
                WhenSpec {
                    glob: Some(vec!["**/package.json".into()]),
                    ..when("/file")
                },
                true,
            ),
            (
                WhenSpec {
                    glob: Some(vec!["*.json".into()]),
                    ..when("/file")
                },
                false,
            ),
        ];
        for (w, expected) in cases {
            assert_eq!(check(&w, &doc, Quantifier::Any).is_ok(), expected, "{w:?}");
        }
    }

    #[test]
    fn any_and_all_over_a_selection() {
        let doc = json!({"tree": [{"path": "package.json"}, {"path": "src/evil.sh"}]});
        let w = WhenSpec {
            glob: Some(vec!["**/package.json".into()]),
            ..when("/tree/*/path")
        };
        assert!(check(&w, &doc, Quantifier::Any).is_ok());
        let e = check(&w, &doc, Quantifier::All).expect_err("an error");
        assert!(e.contains("1 of 2"), "{e}");
        assert!(!e.contains("evil"), "a reason never quotes a value: {e}");
        let empty = json!({"tree": []});
        assert!(
            check(&w, &empty, Quantifier::All)
                .expect_err("an error")
                .contains("selects nothing")
        );
        assert!(check(&w, &empty, Quantifier::Any).is_err());
    }

    #[test]
    fn header_conditions_match_names_case_insensitively() {
        let w = WhenSpec {
            header: Some("X-GitHub-Event".into()),
            one_of: Some(vec!["push".into()]),
            ..WhenSpec::default()
        };
        let f = Filter::compile(&w).expect("compiles");
        let headers: [(&str, &[u8]); 1] = [("x-github-event", b" push ")];
        assert!(
            f.check(
                Subject {
                    headers: &headers,
                    json: None
                },
                Quantifier::Any
            )
            .is_ok()
        );
        let headers: [(&str, &[u8]); 1] = [("x-github-event", b"issues")];
        assert!(
            f.check(
                Subject {
                    headers: &headers,
                    json: None
                },
                Quantifier::Any
            )
            .is_err()
        );
        assert!(!f.needs_json());
    }

    #[test]
    fn a_pointer_on_a_body_that_is_not_json_does_not_hold() {
        let f = Filter::compile(&WhenSpec {
            equals: Some("a".into()),
            ..when("/a")
        })
        .expect("ok");
        let e = f
            .check(
                Subject {
                    headers: &[],
                    json: None,
                },
                Quantifier::Any,
            )
            .expect_err("an error");
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn bad_tables_are_refused_with_every_reason() {
        let e = Filter::compile(&WhenSpec::default()).expect_err("an error");
        assert_eq!(e.len(), 2, "{e:?}");
        let both = WhenSpec {
            header: Some("X".into()),
            equals: Some("a".into()),
            prefix: Some("b".into()),
            ..when("/a")
        };
        assert_eq!(Filter::compile(&both).expect_err("an error").len(), 2);
        let bad_glob = WhenSpec {
            glob: Some(vec!["a/**/b?".into()]),
            ..when("/a")
        };
        let e = Filter::compile(&bad_glob).expect_err("an error");
        assert_eq!(e[0].0, "glob");
        let empty = WhenSpec {
            one_of: Some(vec![]),
            ..when("/a")
        };
        assert_eq!(
            Filter::compile(&empty).expect_err("an error")[0].0,
            "one_of"
        );
        let bad_ptr = WhenSpec {
            equals: Some("a".into()),
            ..when("a")
        };
        assert_eq!(
            Filter::compile(&bad_ptr).expect_err("an error")[0].0,
            "pointer"
        );
    }
}

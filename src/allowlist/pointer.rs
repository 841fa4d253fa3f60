//! JSON Pointer (RFC 6901) with one extension: a `*` token selects every element of an array.
//!
//! A pointer selects a *set* of values: `/commits/*/added/*` selects every added file of every
//! commit. Per RFC 6901, `~1` is `/` and `~0` is `~` inside a token; a token `*` applied to an
//! object is the member named `*` (the wildcard only ranges over arrays); an array index is a
//! decimal without leading zeros (`-`, the element after the last, selects nothing).
//!
//! Bounded: a pointer has at most [`MAX_TOKENS`] tokens, and selection walks the document without
//! recursion beyond that depth.

use serde_json::Value;

/// Most tokens in one pointer.
pub const MAX_TOKENS: usize = 32;

/// One reference token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A member name, or an array index when it reads as one.
    Key(String),
    /// `*`: every array element (or the member `*` of an object).
    Each,
}

/// A parsed pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    tokens: Vec<Token>,
}

impl Pointer {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { tokens: Vec::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} is not a JSON Pointer (it must be empty or start with '/')"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            if tokens.len() == MAX_TOKENS {
                return Err(format!("more than {MAX_TOKENS} tokens"));
            }
            if raw == "*" {
                tokens.push(Token::Each);
                continue;
            }
            let mut key = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    key.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => key.push('~'),
                    Some('1') => key.push('/'),
                    _ => {
                        return Err(format!(
                            "{raw:?}: '~' must be followed by 0 or 1 (RFC 6901: ~0 is '~', ~1 is '/')"
                        ));
                    }
                }
            }
            tokens.push(Token::Key(key));
        }
        Ok(Pointer { tokens })
    }

    /// Every value the pointer selects in `doc`, in document order.
    pub fn select<'v>(&self, doc: &'v Value) -> Vec<&'v Value> {
        let mut current = vec![doc];
        for token in &self.tokens {
            let mut next = Vec::new();
            for v in current {
                match (token, v) {
                    (Token::Each, Value::Array(items)) => next.extend(items.iter()),
                    (Token::Each, Value::Object(m)) => next.extend(m.get("*")),
                    (Token::Key(k), Value::Object(m)) => next.extend(m.get(k.as_str())),
                    (Token::Key(k), Value::Array(items)) => next.extend(index(k, items)),
                    _ => {}
                }
            }
            if next.is_empty() {
                return next;
            }
            current = next;
        }
        current
    }
}

/// The element at array index `k` (RFC 6901: digits, no leading zero).
fn index<'v>(k: &str, items: &'v [Value]) -> Option<&'v Value> {
    let valid =
        !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) && (k == "0" || !k.starts_with('0'));
    if !valid {
        return None;
    }
    items.get(k.parse::<usize>().ok()?)
}

/// A scalar as text for the string conditions: strings as they are, numbers and booleans as their
/// JSON text, `null` and containers as nothing (they never satisfy a condition).
pub fn scalar_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sel(p: &str, doc: &Value) -> Vec<Value> {
        Pointer::parse(p)
            .expect("valid pointer")
            .select(doc)
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn rfc6901_examples() {
        // The document and pointers of RFC 6901 section 5.
        let doc = json!({
            "foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4,
            "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8
        });
        assert_eq!(sel("", &doc), vec![doc.clone()]);
        assert_eq!(sel("/foo", &doc), vec![json!(["bar", "baz"])]);
        assert_eq!(sel("/foo/0", &doc), vec![json!("bar")]);
        assert_eq!(sel("/", &doc), vec![json!(0)]);
        assert_eq!(sel("/a~1b", &doc), vec![json!(1)]);
        assert_eq!(sel("/c%d", &doc), vec![json!(2)]);
        assert_eq!(sel("/ ", &doc), vec![json!(7)]);
        assert_eq!(sel("/m~0n", &doc), vec![json!(8)]);
    }

    #[test]
    fn star_ranges_over_array_elements_only() {
        let doc = json!({"commits": [
            {"added": ["a.txt"], "modified": []},
            {"added": ["b/package.json", "c"]}
        ], "o": {"*": "star", "x": "y"}});
        assert_eq!(
            sel("/commits/*/added/*", &doc),
            vec![json!("a.txt"), json!("b/package.json"), json!("c")]
        );
        assert_eq!(sel("/o/*", &doc), vec![json!("star")]);
        assert!(sel("/commits/*/removed/*", &doc).is_empty());
    }

    #[test]
    fn indexes_follow_the_rfc() {
        let doc = json!({"a": [10, 11]});
        assert_eq!(sel("/a/1", &doc), vec![json!(11)]);
        assert!(sel("/a/01", &doc).is_empty());
        assert!(sel("/a/-", &doc).is_empty());
        assert!(sel("/a/2", &doc).is_empty());
        assert!(sel("/a/+1", &doc).is_empty());
    }

    #[test]
    fn bad_pointers_are_refused_with_the_reason() {
        assert!(
            Pointer::parse("action")
                .expect_err("an error")
                .contains("start with '/'")
        );
        assert!(Pointer::parse("/a~2").expect_err("an error").contains("~0"));
        assert!(Pointer::parse("/a~").is_err());
        assert!(Pointer::parse(&"/x".repeat(MAX_TOKENS + 1)).is_err());
        assert!(Pointer::parse(&"/x".repeat(MAX_TOKENS)).is_ok());
    }

    #[test]
    fn scalars_compare_as_their_text() {
        assert_eq!(scalar_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(scalar_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(scalar_text(&json!(null)), None);
        assert_eq!(scalar_text(&json!({"a": 1})), None);
    }
}

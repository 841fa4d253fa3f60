//! A typed reader over a merged TOML document that collects every error instead of stopping.
//!
//! Each `[section]` is read through a [`Section`], which records the keys it consumed; when the
//! section is finished, any key it did not consume is reported as unknown. Values convert through
//! [`FromToml`], which pushes an error with the full key path and yields `None` on failure, so one
//! pass over the document reports every problem at once.
//!
//! Why not serde's `Deserialize` (the structs do derive `Serialize`): a derived deserializer
//! returns the first error and stops, so a file with five mistakes takes five rounds of `check`;
//! its messages name a key without the file it came from in an overlay; and checks across keys
//! (`tunnel_cpu` in `cpus`, a heartbeat address some peer routes) would still be written by hand,
//! after it. A reader here is one line per key, and the key names are tested against `dump`
//! (`config/tests.rs`, driven by the test-only recorder `asked`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::{Table, Value};

use super::error::ConfigError;
use super::overlay::{Provenance, join_key};

/// Error sink shared by every section reader.
#[derive(Debug)]
pub struct Ctx<'p> {
    pub errors: Vec<ConfigError>,
    /// Non-fatal findings.
    pub warnings: Vec<ConfigError>,
    /// When true, a secret that cannot be read is a warning, not an error.
    pub lenient_secrets: bool,
    provenance: &'p Provenance,
}

impl<'p> Ctx<'p> {
    pub fn new(provenance: &'p Provenance) -> Self {
        Self {
            errors: Vec::new(),
            warnings: Vec::new(),
            lenient_secrets: false,
            provenance,
        }
    }

    fn finding(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.provenance.file_of(key).map(Into::into),
            at: None,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// Records a secret that could not be read: an error, or a warning when secrets are lenient.
    /// Returns true when the caller should go on with a placeholder.
    pub fn secret_unavailable(&mut self, key: &str, message: impl Into<String>) -> bool {
        let f = self.finding(key, message);
        if self.lenient_secrets {
            self.warnings.push(f);
        } else {
            self.errors.push(f);
        }
        self.lenient_secrets
    }

    /// Records a non-fatal finding at `key` (printed by `check`, `run` and `dump`).
    pub fn warning(&mut self, key: &str, message: impl Into<String>) {
        let f = self.finding(key, message);
        self.warnings.push(f);
    }

    /// Records a problem at `key`.
    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        let f = self.finding(key, message);
        self.errors.push(f);
    }
}

/// Human name of a TOML value's type, for "expected X, found Y" messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Conversion of one TOML value into a typed value, reporting failures into the context.
pub trait FromToml: Sized {
    /// What the value should look like, for error messages.
    const EXPECTED: &'static str;
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self>;
}

fn mismatch<T: FromToml>(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<T> {
    ctx.error(
        path,
        format!("expected {}, found {}", T::EXPECTED, type_name(v)),
    );
    None
}

impl FromToml for String {
    const EXPECTED: &'static str = "a string";
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
        match v {
            Value::String(s) => Some(s.clone()),
            _ => mismatch::<Self>(v, ctx, path),
        }
    }
}

impl FromToml for bool {
    const EXPECTED: &'static str = "a boolean";
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
        match v {
            Value::Boolean(b) => Some(*b),
            _ => mismatch::<Self>(v, ctx, path),
        }
    }
}

macro_rules! int_from_toml {
    ($($t:ty),*) => {$(
        impl FromToml for $t {
            const EXPECTED: &'static str = concat!("an integer (", stringify!($t), ")");
            fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
                match v {
                    Value::Integer(i) => match <$t>::try_from(*i) {
                        Ok(n) => Some(n),
                        Err(_) => {
                            ctx.error(path, format!(
                                "{i} is out of range ({}..={})", <$t>::MIN, <$t>::MAX));
                            None
                        }
                    },
                    _ => mismatch::<Self>(v, ctx, path),
                }
            }
        }
    )*};
}
int_from_toml!(u8, u16, u32, u64, usize);

impl FromToml for Duration {
    const EXPECTED: &'static str = "a duration (\"250ms\", \"30s\", \"5m\") or whole seconds";
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
        match v {
            Value::Integer(i) if *i >= 0 => Some(Duration::from_secs(i.unsigned_abs())),
            Value::String(s) => match humantime::parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    ctx.error(path, format!("invalid duration {s:?}: {e}"));
                    None
                }
            },
            _ => mismatch::<Self>(v, ctx, path),
        }
    }
}

impl FromToml for IpAddr {
    const EXPECTED: &'static str = "an IP address";
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
        let s = String::from_toml(v, ctx, path)?;
        match s.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                ctx.error(path, format!("invalid IP address {s:?}"));
                None
            }
        }
    }
}

impl FromToml for IpNet {
    const EXPECTED: &'static str = "a CIDR such as \"10.0.0.0/8\"";
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
        let s = String::from_toml(v, ctx, path)?;
        // A bare address means a host route (/32 or /128).
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) if net.trunc() == net => Some(net),
            Ok(net) => {
                ctx.error(
                    path,
                    format!(
                        "{s:?} has host bits set; did you mean {:?}?",
                        net.trunc().to_string()
                    ),
                );
                None
            }
            Err(_) => {
                ctx.error(path, format!("invalid CIDR {s:?}"));
                None
            }
        }
    }
}

impl FromToml for PathBuf {
    const EXPECTED: &'static str = "a file path";
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
        String::from_toml(v, ctx, path).map(PathBuf::from)
    }
}

impl<T: FromToml> FromToml for Vec<T> {
    const EXPECTED: &'static str = "an array";
    fn from_toml(v: &Value, ctx: &mut Ctx<'_>, path: &str) -> Option<Self> {
        match v {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match T::from_toml(item, ctx, &format!("{path}[{i}]")) {
                        Some(x) => out.push(x),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => mismatch::<Self>(v, ctx, path),
        }
    }
}

/// Reads the keys of one table, remembering which were consumed.
#[derive(Debug)]
pub struct Section<'a> {
    path: String,
    table: &'a Table,
    used: HashSet<&'a str>,
}

impl<'a> Section<'a> {
    pub fn new(path: impl Into<String>, table: &'a Table) -> Self {
        Self {
            path: path.into(),
            table,
            used: HashSet::new(),
        }
    }

    /// The section's own key path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The keys present in the table, consumed or not.
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.table.keys().map(String::as_str)
    }

    /// Full key path of `key` in this section.
    pub fn key(&self, key: &str) -> String {
        join_key(&self.path, key)
    }

    /// The raw value at `key`, marking it consumed.
    pub fn raw(&mut self, key: &str) -> Option<&'a Value> {
        #[cfg(test)]
        asked::note(&self.key(key));
        let (k, v) = self.table.get_key_value(key)?;
        self.used.insert(k.as_str());
        Some(v)
    }

    /// An optional key.
    pub fn opt<T: FromToml>(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<T> {
        let v = self.raw(key)?;
        T::from_toml(v, ctx, &self.key(key))
    }

    /// A key with a default. A present but invalid value is an error (and yields the default so
    /// that the rest of the validation can go on).
    pub fn or<T: FromToml>(&mut self, ctx: &mut Ctx<'_>, key: &str, default: T) -> T {
        match self.raw(key) {
            Some(v) => T::from_toml(v, ctx, &self.key(key)).unwrap_or(default),
            None => default,
        }
    }

    /// A required key; a missing key is an error.
    pub fn req<T: FromToml>(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<T> {
        match self.raw(key) {
            Some(v) => T::from_toml(v, ctx, &self.key(key)),
            None => {
                ctx.error(
                    &self.key(key),
                    format!("missing required key (expected {})", T::EXPECTED),
                );
                None
            }
        }
    }

    /// A sub-table; a value of another type is an error.
    pub fn table(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<Section<'a>> {
        match self.raw(key)? {
            Value::Table(t) => Some(Section::new(self.key(key), t)),
            other => {
                ctx.error(
                    &self.key(key),
                    format!("expected a table, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An array of tables (`[[key]]`); each element becomes a section.
    pub fn tables(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Vec<Section<'a>> {
        let path = self.key(key);
        match self.raw(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::Table(t) => Some(Section::new(format!("{path}[{i}]"), t)),
                    other => {
                        ctx.error(
                            &format!("{path}[{i}]"),
                            format!("expected a table, found {}", type_name(other)),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                ctx.error(
                    &path,
                    format!("expected an array of tables, found {}", type_name(other)),
                );
                Vec::new()
            }
        }
    }

    /// Reports every key of the table that no reader consumed.
    pub fn finish(self, ctx: &mut Ctx<'_>) {
        for key in self.table.keys() {
            if !self.used.contains(key.as_str()) {
                ctx.error(&self.key(key), "unknown key");
            }
        }
    }
}

/// Test support: the schema is what the readers read. Every key a reader looks up goes through
/// [`Section::raw`], present or not, so recording those lookups while a configuration loads lists
/// every key of the schema (the round-trip test in `config/tests.rs` is driven by it).
#[cfg(test)]
pub(crate) mod asked {
    use std::cell::RefCell;

    thread_local! {
        static KEYS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    }

    /// Runs `f`, returning its result and the key paths looked up meanwhile on this thread.
    pub(crate) fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
        KEYS.with(|k| *k.borrow_mut() = Some(Vec::new()));
        let r = f();
        let keys = KEYS.with(|k| k.borrow_mut().take()).unwrap_or_default();
        (r, keys)
    }

    pub(super) fn note(path: &str) {
        KEYS.with(|k| {
            if let Some(keys) = k.borrow_mut().as_mut() {
                keys.push(path.to_owned());
            }
        });
    }
}

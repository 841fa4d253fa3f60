//! The schema held against itself: every key the readers read survives `dump` and a second load,
//! and README's configuration reference names every key with the default the code has.
//!
//! The list of keys is not written here: it is recorded from the readers (`reader::asked`, which
//! notes every key [`reader::Section::raw`] looks up, present or not) while [`BASE`], a
//! configuration with every section, loads. A key added to a reader therefore fails
//! [`every_key_round_trips_through_dump`] until this file gives it a non-default value, fails
//! again if `dump` does not print it in a form the reader takes back, and fails
//! [`readme_documents_every_key_with_the_default_the_code_has`] until README has a row for it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use toml::{Table, Value};

use super::reader::asked;
use super::*;

const PEER_B: &str = "oK56DE9Ue9zK76rAc8pBl6opph+1v36lm7cXXsQKrQM=";
const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const KEY_B: &str = "wDXiFFuXE/Mo2fq41v4KSyuRJg/XBSvTYX76wBwH91c=";

/// The smallest configuration with one of everything: every section a reader enters only when
/// it is there (`[heartbeat]`, one `[[wireguard.peers]]`, `[[allow]]`, `[[scm]]`) and, in each,
/// only the required keys. The sections whose keys all have defaults are left out; their
/// readers look the keys up all the same.
const BASE: &str = r#"
[wireguard]
private_key = { env = "KEY_A" }
address = "10.77.0.2"
[[wireguard.peers]]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "gw.example.com:51820"
allowed_ips = ["10.77.0.1/32"]
[heartbeat]
url = "http://10.77.0.1/ping"
[[allow]]
url = "https://jira.example.com/rest/*"
methods = ["GET"]
[[allow.body]]
pointer = "/tree/*/path"
glob = ["**/package.json"]
[[scm]]
type = "github"
base_url = "https://ghe.example.com/api/v3"
[outbound]
listen = "127.0.0.1:8080"
[[outbound.relay]]
name = "github"
destination_url = "https://hooks.vendor.example/github"
scm = "github"
secret = { env = "HOOK" }
[[outbound.relay.when]]
pointer = "/action"
equals = "opened"
"#;

/// Files and variables the secrets of [`non_default_values`] come from.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("private.key"), format!("{KEY_B}\n")).expect("write");
        std::fs::write(dir.path().join("psk"), KEY_A).expect("write");
        std::fs::write(dir.path().join("ca.pem"), "").expect("write");
        std::fs::write(dir.path().join("hook.secret"), "s3cret\n").expect("write");
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn env(&self) -> impl Fn(&str) -> Option<String> + use<> {
        let creds = self.dir.path().display().to_string();
        move |name: &str| match name {
            "KEY_A" => Some(KEY_A.to_owned()),
            "CREDENTIALS_DIRECTORY" => Some(creds.clone()),
            "TOKEN" => Some("glpat-token".to_owned()),
            "JIRA_AUTH" => Some("Basic amlyYTpodW50ZXIy".to_owned()),
            "HOOK" => Some("hook-secret".to_owned()),
            _ => None,
        }
    }

    fn load(&self, text: &str) -> Result<Config, ConfigErrors> {
        load_str(
            &[(PathBuf::from("t.toml"), text.to_owned())],
            LoadMode::Full,
            &self.env(),
        )
        .map(|l| l.config)
    }
}

/// For every key of the schema (`[]` standing for "an element of this array"), a value that is
/// valid in [`BASE`] and is not what the key defaults to (nor, for a required key, what `BASE`
/// sets). The secrets come from each kind of source; inline secrets, and a `proxy` with a
/// password, are shown redacted, so they cannot round-trip by design.
fn non_default_values(f: &Fixture) -> Vec<(&'static str, String)> {
    let s = |v: &str| v.to_owned();
    vec![
        (
            "wireguard.private_key",
            format!("{{ file = {:?} }}", f.path("private.key")),
        ),
        ("wireguard.address", s(r#""fd00::2""#)),
        ("wireguard.listen_port", s("51821")),
        ("wireguard.mtu", s("1420")),
        ("wireguard.transport", s(r#""tls""#)),
        ("wireguard.ca_files", format!("[{:?}]", f.path("ca.pem"))),
        ("wireguard.proxy", s(r#""http://proxy.example:3128""#)),
        ("wireguard.peers[].public_key", format!("{PEER_B:?}")),
        (
            "wireguard.peers[].preshared_key",
            s(r#"{ credential = "psk" }"#),
        ),
        ("wireguard.peers[].endpoint", s(r#""[fd00::1]:51820""#)),
        (
            "wireguard.peers[].allowed_ips",
            s(r#"["10.77.0.0/24", "fd00::/64"]"#),
        ),
        ("wireguard.peers[].persistent_keepalive", s("0")),
        ("wireguard.peers[].tcp_endpoint", s(r#""gw.example:443""#)),
        ("wireguard.peers[].tls_endpoint", s(r#""gw.example:8443""#)),
        ("inbound.listen_port", s("8080")),
        ("inbound.max_head_bytes", s(r#""32KiB""#)),
        ("inbound.max_headers", s("50")),
        ("inbound.head_timeout", s(r#""1m 30s""#)),
        ("inbound.idle_timeout", s("61")),
        ("inbound.body_timeout", s(r#""1h 2m 3s 4ms""#)),
        ("inbound.max_checked_body", s(r#""2MiB""#)),
        ("heartbeat.url", s(r#""https://10.77.0.1:8443/health?x=1""#)),
        ("heartbeat.interval", s(r#""2m""#)),
        ("heartbeat.timeout", s(r#""250ms""#)),
        (
            "allow[].url",
            s(r#""https://jira.example.com/rest/api/2/issue/:key""#),
        ),
        ("allow[].methods", s(r#"["post", "PROPFIND"]"#)),
        (
            "allow[].set_request_headers",
            s(r#"{ Authorization = { env = "JIRA_AUTH" } }"#),
        ),
        ("allow[].remove_response_headers", s(r#"["Set-Cookie"]"#)),
        ("allow[].log_request_headers", s("true")),
        ("allow[].log_response_headers", s("true")),
        ("allow[].log_request_body", s("true")),
        ("allow[].log_response_body", s("true")),
        ("allow[].path_files", s(r#"["**/package.json", ".snyk"]"#)),
        (
            "allow[].query",
            s(r#"{ a = { equals = "1" }, b = { prefix = "p" }, c = { one_of = ["x", "y"] } }"#),
        ),
        (
            "allow[].headers",
            s(r#"{ Accept = { equals = "application/json" } }"#),
        ),
        ("allow[].body[].pointer", s(r#""/files/*/name""#)),
        ("allow[].body[].equals", s(r#""a""#)),
        ("allow[].body[].one_of", s(r#"["a", "b"]"#)),
        ("allow[].body[].prefix", s(r#""src/""#)),
        ("allow[].body[].contains", s(r#""x""#)),
        ("allow[].body[].glob", s(r#"["**/pom.xml"]"#)),
        ("scm[].type", s(r#""gitlab""#)),
        ("scm[].base_url", s(r#""https://ghe2.example.com/api/v3""#)),
        ("scm[].token", s(r#"{ env = "TOKEN" }"#)),
        (
            "scm[].tokens",
            s(r#"[{ env = "TOKEN" }, { credential = "psk" }]"#),
        ),
        ("scm[].allow_code_access", s("true")),
        ("upstream.ca_files", format!("[{:?}]", f.path("ca.pem"))),
        ("upstream.tls_min_version", s(r#""1.3""#)),
        ("upstream.connect_timeout", s(r#""3s""#)),
        ("upstream.tls_timeout", s(r#""4s""#)),
        ("upstream.response_timeout", s(r#""5s""#)),
        ("upstream.idle_timeout", s(r#""6s""#)),
        ("upstream.pool_max_idle_per_host", s("7")),
        ("upstream.proxy", s(r#""https://proxy.example:3128""#)),
        ("upstream.no_proxy", s(r#"[".corp", "scm.example.com"]"#)),
        ("upstream.use_env_proxy", s("false")),
        ("admin.listen", s(r#""[::1]:9100""#)),
        ("admin.enabled", s("false")),
        ("log.format", s(r#""json""#)),
        ("log.level", s(r#""debug""#)),
        ("log.body_limit", s(r#""1KiB""#)),
        ("runtime.cpus", s("[0, 1]")),
        ("runtime.tunnel_cpu", s("1")),
        ("runtime.shards", s("2")),
        ("runtime.pin", s("false")),
        ("runtime.ring_depth", s("256")),
        ("runtime.io_memory", s(r#""1MiB""#)),
        ("runtime.spin_before_park", s(r#""100us""#)),
        ("runtime.preempt_timer", s(r#""5ms""#)),
        ("runtime.udp_recv_buffer", s(r#""8MiB""#)),
        ("runtime.udp_send_buffer", s("1000000")),
        ("runtime.udp_gso", s("false")),
        ("runtime.tcp_rx_buffer", s(r#""32KiB""#)),
        ("runtime.tcp_tx_buffer", s(r#""128KiB""#)),
        ("runtime.tcp_ack_delay", s(r#""0s""#)),
        ("runtime.stacks_per_shard", s("2")),
        ("runtime.listen_backlog", s("8")),
        ("runtime.max_connections", s("100")),
        ("runtime.channel_capacity", s("512")),
        ("netstack.congestion", s(r#""newreno""#)),
        ("netstack.rx_buffer_max", s(r#""8MiB""#)),
        ("netstack.tx_buffer_max", s(r#""2MiB""#)),
        ("outbound.listen", s(r#""[::1]:8081""#)),
        ("outbound.spool_dir", s(r#""/srv/spool""#)),
        ("outbound.spool_max", s(r#""1GiB""#)),
        ("outbound.max_body", s(r#""1MiB""#)),
        ("outbound.retry_min", s(r#""2s""#)),
        ("outbound.retry_max", s(r#""1h""#)),
        ("outbound.delivery_timeout", s(r#""10s""#)),
        ("outbound.relay[].name", s(r#""gl""#)),
        (
            "outbound.relay[].destination_url",
            s(r#""http://10.77.0.1:8080/hooks""#),
        ),
        ("outbound.relay[].scm", s(r#""bitbucket""#)),
        (
            "outbound.relay[].secret",
            format!("{{ file = {:?} }}", f.path("hook.secret")),
        ),
        ("outbound.relay[].events", s(r#"["push"]"#)),
        ("outbound.relay[].touches", s(r#"["**/pom.xml"]"#)),
        ("outbound.relay[].when[].pointer", s(r#""/ref""#)),
        ("outbound.relay[].when[].header", s(r#""X-GitHub-Event""#)),
        ("outbound.relay[].when[].equals", s(r#""closed""#)),
        ("outbound.relay[].when[].one_of", s(r#"["a", "b"]"#)),
        ("outbound.relay[].when[].prefix", s(r#""refs/""#)),
        ("outbound.relay[].when[].contains", s(r#""x""#)),
        ("outbound.relay[].when[].glob", s(r#"["**/pom.xml"]"#)),
    ]
}

/// Keys of which a table takes exactly one (a `when` has one selector and one condition): before
/// one of them is set, the others of its group are taken out of [`BASE`].
const EXCLUSIVE: &[&[&str]] = &[
    &[
        "allow[].body[].equals",
        "allow[].body[].one_of",
        "allow[].body[].prefix",
        "allow[].body[].contains",
        "allow[].body[].glob",
    ],
    &[
        "outbound.relay[].when[].pointer",
        "outbound.relay[].when[].header",
    ],
    &[
        "outbound.relay[].when[].equals",
        "outbound.relay[].when[].one_of",
        "outbound.relay[].when[].prefix",
        "outbound.relay[].when[].contains",
        "outbound.relay[].when[].glob",
    ],
];

/// [`set`], after taking the keys exclusive with `key` ([`EXCLUSIVE`]) out of `doc`.
fn set_alone(doc: &mut Table, key: &str, v: Value) {
    for group in EXCLUSIVE.iter().filter(|g| g.contains(&key)) {
        for other in group.iter().filter(|o| **o != key) {
            unset(doc, other);
        }
    }
    set(doc, key, v);
}

/// `a.b[3].c` → `a.b[].c`: one name for a key of any element of an array.
fn generic(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Every key the readers look up while [`BASE`] loads, less the ones that only hold other keys
/// (sections, `[[wireguard.peers]]`): the schema's leaves.
fn schema(f: &Fixture) -> BTreeSet<String> {
    let (loaded, keys) = asked::record(|| f.load(BASE));
    loaded.expect("BASE is valid");
    let keys: BTreeSet<String> = keys.iter().map(|k| generic(k)).collect();
    keys.iter()
        .filter(|k| {
            !keys.iter().any(|other| {
                other.starts_with(&format!("{k}.")) || other.starts_with(&format!("{k}["))
            })
        })
        .cloned()
        .collect()
}

/// Parses one TOML value.
fn value(text: &str) -> Value {
    let mut t: Table = toml::from_str(&format!("v = {text}")).expect(text);
    t.remove("v").expect("v")
}

/// Sets `path` (in the notation of [`generic`]; `[]` = the first element) in `doc`, creating
/// the tables on the way.
fn set(doc: &mut Table, path: &str, v: Value) {
    let mut segments: Vec<&str> = path.split('.').collect();
    let last = segments.pop().expect("a key");
    let mut t = doc;
    for seg in segments {
        t = match seg.strip_suffix("[]") {
            Some(name) => match t.get_mut(name) {
                Some(Value::Array(items)) => items
                    .first_mut()
                    .and_then(Value::as_table_mut)
                    .expect("BASE has an element"),
                _ => panic!("{name} is not an array in BASE"),
            },
            None => t
                .entry(seg)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .expect("a table"),
        };
    }
    t.insert(last.to_owned(), v);
}

/// What `dump` prints, turned back into configuration input by undoing its presentation (the
/// only differences between the two): the keys `dump` derives (`wireguard.public_key`,
/// `scm[N].generated_rules`) go, and the user's rules move from `[[rules]]`, where they are
/// listed with their `origin = "allow[N]"`, back to `[[allow]]`; the generated rules go.
fn as_input(dump: &str) -> String {
    let mut doc: Table = toml::from_str(dump).expect("dump is TOML");
    if let Some(Value::Table(wg)) = doc.get_mut("wireguard") {
        wg.remove("public_key").expect("dump shows the public key");
    }
    if let Some(Value::Array(scm)) = doc.get_mut("scm") {
        for s in scm.iter_mut().filter_map(Value::as_table_mut) {
            s.remove("generated_rules").expect("dump counts the rules");
        }
    }
    let rules = match doc.remove("rules") {
        Some(Value::Array(rules)) => rules,
        other => panic!("dump lists the rules: {other:?}"),
    };
    let allow: Vec<Value> = rules
        .into_iter()
        .filter_map(|r| match r {
            Value::Table(mut t) => {
                let origin = t.remove("origin").expect("every rule has an origin");
                origin
                    .as_str()
                    .is_some_and(|o| o.starts_with("allow["))
                    .then_some(Value::Table(t))
            }
            _ => None,
        })
        .collect();
    doc.insert("allow".into(), Value::Array(allow));
    toml::to_string(&doc).expect("renders")
}

/// Loads `text`, dumps it, loads the dump: the two configurations and their dumps must be equal.
/// The error says what differs, with the dump.
fn round_trip(f: &Fixture, text: &str) -> Result<Config, String> {
    let first = f
        .load(text)
        .map_err(|e| format!("does not load:\n{e}{text}"))?;
    let dumped = dump::render(&first);
    let input = as_input(&dumped);
    let second = f
        .load(&input)
        .map_err(|e| format!("its dump does not load:\n{e}{input}"))?;
    if second != first {
        return Err(format!(
            "its dump loads as another configuration:\n{dumped}"
        ));
    }
    let again = dump::render(&second);
    if again != dumped {
        return Err(format!("the dumps differ:\n{dumped}\n---\n{again}"));
    }
    Ok(first)
}

#[test]
fn every_key_round_trips_through_dump() {
    let f = Fixture::new();
    let values = non_default_values(&f);
    let schema = schema(&f);
    let listed: BTreeSet<String> = values.iter().map(|(k, _)| (*k).to_owned()).collect();
    let missing: Vec<&String> = schema.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "keys the readers read without a non-default value in this test: {missing:?}"
    );
    let stale: Vec<&String> = listed.difference(&schema).collect();
    assert!(stale.is_empty(), "keys no reader reads: {stale:?}");

    let base_doc: Table = toml::from_str(BASE).expect("BASE parses");
    let defaults = round_trip(&f, BASE).unwrap_or_else(|e| panic!("BASE: {e}"));
    let mut failures = Vec::new();
    for (key, v) in &values {
        let mut doc = base_doc.clone();
        set_alone(&mut doc, key, value(v));
        let text = toml::to_string(&doc).expect("renders");
        match round_trip(&f, &text) {
            Ok(c) if c == defaults => failures.push(format!(
                "{key} = {v}: the same configuration as without it (a default, or not read)"
            )),
            Ok(_) => {}
            Err(e) => failures.push(format!("{key} = {v}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} keys do not round-trip:\n{}\n\n{}",
        failures.len(),
        values.len(),
        failures
            .iter()
            .map(|f| f.lines().next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n"),
        failures.join("\n\n")
    );
}

#[test]
fn dump_never_shows_a_secret_however_it_is_given() {
    let f = Fixture::new();
    let mut doc: Table = toml::from_str(BASE).expect("BASE parses");
    let secrets = [
        "wireguard.private_key",
        "wireguard.peers[].preshared_key",
        "allow[].set_request_headers",
        "scm[].token",
        "outbound.relay[].secret",
    ];
    for (key, v) in non_default_values(&f) {
        if secrets.contains(&key) {
            set(&mut doc, key, value(&v));
        }
    }
    set(
        &mut doc,
        "allow[].set_request_headers.X-Inline",
        value(r#""inline-secret""#),
    );
    let c = f
        .load(&toml::to_string(&doc).expect("renders"))
        .expect("loads");
    let shown = dump::render(&c);
    for secret in [
        KEY_A,
        KEY_B,
        "glpat-token",
        "amlyYTpodW50ZXIy",
        "inline-secret",
        "hook-secret",
        "s3cret",
    ] {
        assert!(!shown.contains(secret), "{secret} in\n{shown}");
    }
}

/// What README's configuration reference says of one key.
#[derive(Debug)]
enum Documented {
    /// `required`.
    Required,
    /// A value in backticks, as a user would write it (`16KiB`, `"1.2"`, `[]`).
    Default(String),
    /// `none`, or prose (`all`, `first of cpus`): nothing to hold the code to.
    Other,
}

/// The rows of README's configuration reference: `(key, what it says of the default)`, keys in
/// the notation of [`generic`]. A section starts at a line that opens with its header in
/// backticks (`### \`[inbound]\``, `` `[[wireguard.peers]]` — ``); a row's first cell names one
/// or more keys, its second cell the default — one for all of them, or one each.
fn readme_reference() -> Vec<(String, Documented)> {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("## Configuration reference")
        .expect("README has a configuration reference");
    let text = &readme[start..];
    let end = text[3..].find("\n## ").map_or(text.len(), |i| i + 3);
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut section = String::new();
    let mut arrays: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in text[..end].lines() {
        let opening = line.trim_start_matches('#').trim_start();
        if let Some(header) = opening.strip_prefix('`').and_then(|h| h.split('`').next()) {
            if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
                // `[[outbound.relay.when]]` after `[[outbound.relay]]`: `outbound.relay[].when[]`.
                let mut path = String::new();
                for part in name.split('.') {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(part);
                    if arrays.contains(&path.replace("[]", "")) {
                        path.push_str("[]");
                    }
                }
                arrays.push(name.to_owned());
                section = format!("{path}[]");
                continue;
            }
            if let Some(name) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
        }
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let row = format!("`{row}");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (keys, default) = (ticked(cells[0]), cells[1]);
        let documented: Vec<Documented> = if default == "required" {
            keys.iter().map(|_| Documented::Required).collect()
        } else if default.starts_with('`') {
            let values = ticked(default);
            match values.len() {
                1 => keys
                    .iter()
                    .map(|_| Documented::Default(values[0].clone()))
                    .collect(),
                n if n == keys.len() => values.into_iter().map(Documented::Default).collect(),
                _ => panic!("README row {line:?}: {keys:?} with defaults {values:?}"),
            }
        } else {
            keys.iter().map(|_| Documented::Other).collect()
        };
        for (key, d) in keys.iter().zip(documented) {
            out.push((format!("{section}.{key}"), d));
        }
    }
    out
}

/// A default as README writes it, as a TOML value: TOML if it is (`80`, `"1.2"`, `[]`), else a
/// string (`16KiB`, `60s`).
fn readme_value(text: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_owned()))
}

/// Removes `path` (notation of [`generic`]) from `doc`; false when it is not there.
fn unset(doc: &mut Table, path: &str) -> bool {
    let (parent, last) = path.rsplit_once('.').expect("a key in a section");
    let mut t = doc;
    for seg in parent.split('.') {
        let v = match seg.strip_suffix("[]") {
            Some(name) => t
                .get_mut(name)
                .and_then(Value::as_array_mut)
                .and_then(|a| a.first_mut()),
            None => t.get_mut(seg),
        };
        match v.and_then(Value::as_table_mut) {
            Some(inner) => t = inner,
            None => return false,
        }
    }
    t.remove(last).is_some()
}

#[test]
fn readme_documents_every_key_with_the_default_the_code_has() {
    let f = Fixture::new();
    let schema = schema(&f);
    let reference = readme_reference();
    let documented: BTreeSet<String> = reference.iter().map(|(k, _)| k.clone()).collect();
    let undocumented: Vec<&String> = schema.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from README's configuration reference: {undocumented:?}"
    );
    let unknown: Vec<&String> = documented.difference(&schema).collect();
    assert!(
        unknown.is_empty(),
        "README documents keys no reader reads: {unknown:?}"
    );

    let base_doc: Table = toml::from_str(BASE).expect("BASE parses");
    let defaults = f.load(BASE).expect("BASE loads");
    let mut wrong = Vec::new();
    for (key, d) in &reference {
        let mut doc = base_doc.clone();
        match d {
            Documented::Default(v) => {
                set_alone(&mut doc, key, readme_value(v));
                match f.load(&toml::to_string(&doc).expect("renders")) {
                    Ok(c) if c == defaults => {}
                    Ok(_) => wrong.push(format!("{key}: README says `{v}`, the code differs")),
                    Err(e) => wrong.push(format!("{key}: README's `{v}` is refused: {e}")),
                }
            }
            Documented::Required => {
                // BASE sets exactly the required keys.
                let refused = unset(&mut doc, key)
                    && f.load(&toml::to_string(&doc).expect("renders"))
                        .err()
                        .is_some_and(|e| e.0.iter().any(|e| generic(&e.key) == *key));
                if !refused {
                    wrong.push(format!(
                        "{key}: README says required, the code does without"
                    ));
                }
            }
            Documented::Other => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "README disagrees with the code:\n{}",
        wrong.join("\n")
    );
}

/// `[wireguard] proxy` (the stream transports' CONNECT proxy) is checked at load with the
/// upstream proxy's parser, and its password reaches neither an error nor `dump`.
#[test]
fn the_wireguard_proxy_is_validated_and_its_password_never_shown() {
    let f = Fixture::new();
    let with = |proxy: &str| {
        BASE.replace(
            "address = \"10.77.0.2\"\n",
            &format!("address = \"10.77.0.2\"\ntransport = \"tls\"\nproxy = \"{proxy}\"\n"),
        )
    };
    let c = f
        .load(&with("http://user:hunter2@proxy.corp:3128"))
        .expect("valid");
    assert_eq!(c.wireguard.transport, crate::transport::Transport::Tls);
    let dumped = super::dump::render(&c);
    assert!(!dumped.contains("hunter2"), "{dumped}");
    assert!(dumped.contains("proxy.corp:3128"), "{dumped}");
    let errs = f
        .load(&with("socks5://user:hunter2@proxy.corp:1080"))
        .expect_err("refused");
    let shown = errs.to_string();
    assert!(
        shown.contains("wireguard.proxy") && shown.contains("unsupported proxy scheme"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}

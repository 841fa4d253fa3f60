//! The gateway schema held against itself (every key survives `dump` and a second load) and the
//! checks across tenants, each reported with the others in one load.

use std::collections::BTreeSet;

use toml::{Table, Value};

use super::*;
use crate::config::reader::asked;

const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const KEY_B: &str = "wDXiFFuXE/Mo2fq41v4KSyuRJg/XBSvTYX76wBwH91c=";

/// The public key of a broker whose private key is `[n; 32]`.
fn broker_key(n: u8) -> String {
    PrivateKey::from_bytes([n; 32]).public_key().to_string()
}

fn env(name: &str) -> Option<String> {
    match name {
        "KEY_A" => Some(KEY_A.to_owned()),
        "KEY_B" => Some(KEY_B.to_owned()),
        "PSK" => Some(KEY_B.to_owned()),
        _ => None,
    }
}

fn load(text: &str) -> Result<LoadedGateway, ConfigErrors> {
    load_str(
        &[(PathBuf::from("gw.toml"), text.to_owned())],
        LoadMode::Full,
        &env,
    )
}

/// Every section, one tenant with one broker, only the required keys.
fn base() -> String {
    format!(
        r#"
[gateway]
private_key = {{ env = "KEY_A" }}
listen = "0.0.0.0:51820"
address = "10.77.0.1"
front = "127.0.0.1:8080"
[[tenant]]
name = "acme"
[[tenant.broker]]
public_key = "{}"
address = "10.77.1.2"
"#,
        broker_key(1)
    )
}

/// A non-default value for every gateway key (the shared sections are covered by the broker's
/// own round-trip test).
fn non_default_values() -> Vec<(&'static str, String)> {
    let s = |v: &str| v.to_owned();
    vec![
        ("gateway.private_key", s(r#"{ env = "KEY_B" }"#)),
        ("gateway.listen", s(r#""[::]:51821""#)),
        ("gateway.address", s(r#""10.77.0.9""#)),
        ("gateway.front", s(r#""127.0.0.1:8081""#)),
        ("gateway.mtu", s("1420")),
        ("gateway.broker_port", s("8080")),
        ("gateway.health_interval", s(r#""2s""#)),
        ("gateway.health_timeout", s(r#""500ms""#)),
        ("gateway.connect_timeout", s(r#""3s""#)),
        ("gateway.head_timeout", s(r#""20s""#)),
        ("gateway.response_timeout", s(r#""90s""#)),
        ("gateway.body_timeout", s(r#""45s""#)),
        ("gateway.pool_idle_per_broker", s("8")),
        ("gateway.pool_idle_total", s("100")),
        ("gateway.pool_idle_timeout", s(r#""10s""#)),
        ("gateway.tls_listen", s(r#""0.0.0.0:8443""#)),
        (
            "gateway.tls_cert",
            format!("{:?}", existing_file("Cargo.toml")),
        ),
        (
            "gateway.tls_key",
            format!("{:?}", existing_file("README.md")),
        ),
        ("tenant[].name", s(r#""globex-2""#)),
        (
            "tenant[].broker[].public_key",
            format!("{:?}", broker_key(2)),
        ),
        ("tenant[].broker[].preshared_key", s(r#"{ env = "PSK" }"#)),
        ("tenant[].broker[].address", s(r#""10.77.1.3""#)),
    ]
}

/// A file that exists (the `tls_*` paths are checked to be readable at load).
fn existing_file(name: &str) -> String {
    format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The `tls_*` keys go together: set alone, one of them is an error. The values the others take
/// when one is set by [`every_gateway_key_round_trips_through_dump`].
fn tls_companions() -> Vec<(&'static str, String)> {
    vec![
        ("gateway.tls_listen", r#""0.0.0.0:443""#.to_owned()),
        (
            "gateway.tls_cert",
            format!("{:?}", existing_file("Cargo.lock")),
        ),
        (
            "gateway.tls_key",
            format!("{:?}", existing_file("Cargo.lock")),
        ),
    ]
}

/// Sets `path` (`[]` = the first element) in `doc`.
fn set(doc: &mut Table, path: &str, v: Value) {
    let mut segments: Vec<&str> = path.split('.').collect();
    let last = segments.pop().expect("a key");
    let mut t = doc;
    for seg in segments {
        t = match seg.strip_suffix("[]") {
            Some(name) => t
                .get_mut(name)
                .and_then(Value::as_array_mut)
                .and_then(|a| a.first_mut())
                .and_then(Value::as_table_mut)
                .expect("base has an element"),
            None => t
                .entry(seg)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .expect("a table"),
        };
    }
    t.insert(last.to_owned(), v);
}

/// Loads `text`, dumps it, loads the dump (less the derived `gateway.public_key`): equal.
fn round_trip(text: &str) -> Result<GatewayConfig, String> {
    let first = load(text).map_err(|e| format!("does not load:\n{e}{text}"))?;
    let dumped = render(&first.config);
    let mut doc: Table = toml::from_str(&dumped).map_err(|e| format!("dump is not TOML: {e}"))?;
    doc.get_mut("gateway")
        .and_then(Value::as_table_mut)
        .and_then(|g| g.remove("public_key"))
        .ok_or("dump shows no gateway.public_key")?;
    let input = toml::to_string(&doc).map_err(|e| e.to_string())?;
    let second = load(&input).map_err(|e| format!("its dump does not load:\n{e}{input}"))?;
    if second.config != first.config {
        return Err(format!(
            "its dump loads as another configuration:\n{dumped}"
        ));
    }
    Ok(first.config)
}

#[test]
fn every_gateway_key_round_trips_through_dump() {
    let (loaded, asked) = asked::record(|| load(&base()));
    loaded.expect("base is valid");
    let listed: BTreeSet<&str> = non_default_values().iter().map(|(k, _)| *k).collect();
    let read: BTreeSet<String> = asked
        .iter()
        .filter(|k| k.starts_with("gateway.") || k.starts_with("tenant["))
        .map(|k| k.replace("[0]", "[]"))
        .filter(|k| k != "tenant[].broker")
        .collect();
    let read: BTreeSet<&str> = read.iter().map(String::as_str).collect();
    assert_eq!(read, listed, "the keys read and the keys this test sets");

    let defaults = round_trip(&base()).unwrap_or_else(|e| panic!("base: {e}"));
    let base_doc: Table = toml::from_str(&base()).expect("parses");
    for (key, v) in non_default_values() {
        let mut doc = base_doc.clone();
        if key.starts_with("gateway.tls_") {
            for (k, v) in tls_companions() {
                let mut t: Table = toml::from_str(&format!("v = {v}")).expect("value");
                set(&mut doc, k, t.remove("v").expect("v"));
            }
        }
        let mut t: Table = toml::from_str(&format!("v = {v}")).expect("value");
        set(&mut doc, key, t.remove("v").expect("v"));
        let text = toml::to_string(&doc).expect("renders");
        match round_trip(&text) {
            Ok(c) => assert_ne!(c, defaults, "{key} = {v} is not read"),
            Err(e) => panic!("{key} = {v}: {e}"),
        }
    }
}

/// `tls_listen`, `tls_cert` and `tls_key` go together, and the files must be readable.
#[test]
fn the_tls_listener_needs_its_certificate_and_key() {
    let with = |extra: &str| {
        base().replace(
            "front = \"127.0.0.1:8080\"\n",
            &format!("front = \"127.0.0.1:8080\"\n{extra}"),
        )
    };
    let e = load(&with("tls_listen = \"0.0.0.0:443\"\n"))
        .expect_err("no certificate")
        .to_string();
    assert!(
        e.contains("gateway.tls_listen: needs tls_cert and tls_key"),
        "{e}"
    );
    let cert = existing_file("Cargo.toml");
    let e = load(&with(&format!(
        "tls_cert = {cert:?}\ntls_key = \"/nonexistent/gw.key\"\n"
    )))
    .expect_err("no listener, no key file")
    .to_string();
    assert!(
        e.contains("tls_cert and tls_key are set but tls_listen is not"),
        "{e}"
    );
    assert!(
        e.contains("gateway.tls_key: cannot read /nonexistent/gw.key"),
        "{e}"
    );
    let ok = load(&with(&format!(
        "tls_listen = \"0.0.0.0:443\"\ntls_cert = {cert:?}\ntls_key = {cert:?}\n"
    )))
    .expect("valid");
    assert_eq!(
        ok.config.gateway.tls_listen,
        Some("0.0.0.0:443".parse().expect("addr"))
    );
}

#[test]
fn clashes_across_tenants_are_all_reported_in_one_load() {
    let text = format!(
        r#"
[gateway]
private_key = {{ env = "KEY_A" }}
listen = "0.0.0.0:51820"
address = "10.77.0.1"
front = "127.0.0.1:8080"
[[tenant]]
name = "acme"
[[tenant.broker]]
public_key = "{k1}"
address = "10.77.1.2"
[[tenant.broker]]
public_key = "{gw}"
address = "10.77.0.1"
[[tenant]]
name = "acme"
[[tenant.broker]]
public_key = "{k1}"
address = "10.77.1.2"
[[tenant]]
name = "bad/name"
[[tenant.broker]]
public_key = "{k2}"
address = "fd00::2"
[[tenant]]
name = "empty"
"#,
        k1 = broker_key(1),
        k2 = broker_key(2),
        gw = PrivateKey::from_base64(KEY_A).expect("key").public_key(),
    );
    let errors = load(&text).expect_err("invalid").0;
    let found: Vec<(String, String)> = errors
        .iter()
        .map(|e| (e.key.clone(), e.message.clone()))
        .collect();
    let expect = [
        ("tenant[0].broker[1].public_key", "gateway's own key"),
        ("tenant[0].broker[1].address", "gateway's own address"),
        ("tenant[1].name", "already defined at tenant[0]"),
        (
            "tenant[1].broker[0].public_key",
            "same key as tenant[0].broker[0]",
        ),
        (
            "tenant[1].broker[0].address",
            "already tenant[0].broker[0]'s address",
        ),
        ("tenant[2].name", "not a valid tenant name"),
        ("tenant[2].broker[0].address", "same family"),
        ("tenant[3].broker", "at least one [[tenant.broker]]"),
    ];
    for (key, msg) in expect {
        assert!(
            found.iter().any(|(k, m)| k == key && m.contains(msg)),
            "no error at {key} saying {msg:?}; got {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn dump_shows_the_source_of_an_inline_key_never_the_key() {
    let text = base().replace(r#"{ env = "KEY_A" }"#, &format!("{KEY_B:?}"));
    let loaded = load(&text).expect("valid");
    let out = render(&loaded.config);
    assert!(!out.contains(KEY_B), "{out}");
    let public = PrivateKey::from_base64(KEY_B).expect("key").public_key();
    assert!(out.contains(&format!("public_key = \"{public}\"")), "{out}");
}

#[test]
fn the_shipped_example_loads_and_declares_a_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, EXAMPLE).expect("write");
    let layers = crate::config::read_layers(std::slice::from_ref(&path)).expect("read");
    assert!(declares_gateway(&layers));
    // Its key is a systemd credential: policy mode reads the rest without it.
    let loaded = super::load(std::slice::from_ref(&path), LoadMode::Policy, &env).expect("valid");
    assert_eq!(loaded.config.tenant.len(), 2);
    assert_eq!(loaded.config.brokers().count(), 3);
    let broker = dir.path().join("broker.toml");
    std::fs::write(&broker, super::super::EXAMPLE).expect("write");
    let layers = crate::config::read_layers(&[broker]).expect("read");
    assert!(!declares_gateway(&layers));
}

#[test]
fn pool_bounds_beyond_the_netstack_or_each_other_are_refused() {
    let text = base().replace(
        "[gateway]\n",
        "[gateway]\npool_idle_total = 4096\npool_idle_per_broker = 5000\npool_idle_timeout = \"0s\"\n",
    );
    let errors = load(&text).expect_err("invalid").0;
    let found: Vec<(String, String)> = errors
        .iter()
        .map(|e| (e.key.clone(), e.message.clone()))
        .collect();
    for (key, msg) in [
        ("gateway.pool_idle_total", "above 2048"),
        ("gateway.pool_idle_per_broker", "above pool_idle_total"),
        ("gateway.pool_idle_timeout", "greater than zero"),
    ] {
        assert!(
            found.iter().any(|(k, m)| k == key && m.contains(msg)),
            "no error at {key} saying {msg:?}; got {found:#?}"
        );
    }
}

#[test]
fn the_netstack_section_is_the_brokers() {
    let text = format!(
        "{}\n[netstack]\ncongestion = \"bbr\"\ntx_buffer_max = \"8MiB\"\n",
        base()
    );
    let loaded = load(&text).expect("valid");
    assert_eq!(
        loaded.config.netstack.congestion,
        crate::config::Congestion::Bbr
    );
    assert_eq!(loaded.config.netstack.tx_buffer_max, 8 << 20);
    let dumped = render(&loaded.config);
    assert!(dumped.contains("congestion = \"bbr\""), "{dumped}");
    let bad = format!("{}\n[netstack]\ncongestion = \"vegas\"\n", base());
    let errors = load(&bad).expect_err("invalid").0;
    assert!(
        errors.iter().any(|e| e.key == "netstack.congestion"),
        "{errors:?}"
    );
}

//! The webhook relay end to end: an SCM posting signed webhooks to a running broker's
//! `[outbound]` listener, a vendor that goes down and comes back, a broker killed with events in
//! its spool, a spool that fills up, and a delivery through the tunnel.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use wgbroker::keys::PrivateKey;
use wgbroker::testkit::toml::{PeerToml, WireguardToml};
use wgbroker::testkit::webhooks::{MockVendor, Mode, github_headers, post};

use crate::harness::{Tunnel, metric, poll_for, poll_until};

const SECRET: &str = "It's a Secret to Everybody";

/// `[outbound]` with one GitHub relay to `destination`, spooling in `spool`.
fn outbound(destination: &str, spool: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[outbound]
listen = "127.0.0.1:0"
spool_dir = {spool:?}
retry_min = "20ms"
retry_max = "100ms"
delivery_timeout = "5s"
{extra}
[[outbound.relay]]
name = "github"
destination_url = "{destination}"
scm = "github"
secret = "{SECRET}"
events = ["push", "pull_request"]
"#
    )
}

fn push_body(n: usize) -> Vec<u8> {
    format!(r#"{{"ref":"refs/heads/main","n":{n},"commits":[]}}"#).into_bytes()
}

fn send(broker: SocketAddr, n: usize) -> wgbroker::testkit::webhooks::Answer {
    let body = push_body(n);
    let h = github_headers("push", &format!("delivery-{n}"), &body, SECRET);
    post(broker, "github", &h, &body).expect("post")
}

fn deliveries(v: &MockVendor) -> Vec<String> {
    v.received()
        .iter()
        .map(|r| r.header("X-GitHub-Delivery").unwrap_or_default().to_owned())
        .collect()
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("delivery-{i}")).collect()
}

#[test]
fn a_vendor_down_then_back_receives_every_accepted_event_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = MockVendor::start(Mode::Unavailable).expect("vendor");
    let t = Tunnel::start(&outbound(&vendor.url("/hooks"), dir.path(), ""));
    let status = t.broker.as_ref().expect("running").status().clone();
    let broker = SocketAddr::from(([127, 0, 0, 1], status.outbound_port.load(Ordering::Relaxed)));

    for n in 0..5 {
        let a = send(broker, n);
        assert_eq!(a.status, 202, "{a:?}");
    }
    // Filtered and refused webhooks never reach the vendor.
    let body = br#"{"zen":"x"}"#;
    let a = post(
        broker,
        "github",
        &github_headers("ping", "p", body, SECRET),
        body,
    )
    .expect("post");
    assert_eq!(
        (a.status, a.body.contains(r#""relayed":false"#)),
        (200, true),
        "{a:?}"
    );
    let a = post(
        broker,
        "github",
        &github_headers("push", "x", body, "wrong"),
        body,
    )
    .expect("post");
    assert_eq!(a.status, 401);
    let a = post(
        broker,
        "gitlab",
        &github_headers("push", "x", body, SECRET),
        body,
    )
    .expect("post");
    assert_eq!(a.status, 404);

    poll_until(
        Duration::from_secs(10),
        "retries while the vendor is down",
        || vendor.refused() >= 3,
    );
    vendor.set_mode(Mode::Drop);
    let refused = vendor.refused();
    poll_until(
        Duration::from_secs(10),
        "retries against dropped connections",
        || vendor.refused() >= refused + 2,
    );
    assert!(vendor.received().is_empty());
    vendor.set_mode(Mode::Up);
    poll_until(Duration::from_secs(20), "every event delivered", || {
        vendor.received().len() >= 5
    });
    assert_eq!(deliveries(&vendor), expected(5), "each once, in order");
    let first = &vendor.received()[0];
    assert_eq!(first.body, push_body(0), "the body unchanged");
    assert_eq!(first.header("X-Wgbroker-Relay"), Some("github"));
    assert_eq!(first.header("X-GitHub-Event"), Some("push"));
    assert_eq!(
        first.header("X-Hub-Signature-256").map(str::to_owned),
        Some(wgbroker::relay::verify::sign_sha256(SECRET, &push_body(0)))
    );
    let port = status.admin_port.load(Ordering::Relaxed);
    poll_until(Duration::from_secs(5), "the spool empty", || {
        metric(port, "wgbroker_spool_events") == Some(0.0)
    });
    let m = |s: &str| metric(port, s);
    assert_eq!(
        m("wgbroker_webhooks_accepted_total{relay=\"github\"}"),
        Some(5.0)
    );
    assert_eq!(
        m("wgbroker_webhooks_delivered_total{relay=\"github\"}"),
        Some(5.0)
    );
    assert_eq!(
        m("wgbroker_webhooks_filtered_total{relay=\"github\",reason=\"events\"}"),
        Some(1.0)
    );
    assert_eq!(
        m("wgbroker_webhooks_unauthenticated_total{relay=\"github\"}"),
        Some(1.0)
    );
    assert_eq!(m("wgbroker_webhooks_unknown_relay_total"), Some(1.0));
    assert!(m("wgbroker_webhook_retries_total{relay=\"github\"}").unwrap_or(0.0) >= 5.0);
    // Nothing left on disk once delivered.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("github"))
        .expect("relay dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_full_spool_answers_503_and_loses_nothing_it_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = MockVendor::start(Mode::Unavailable).expect("vendor");
    // Room for a few events of ~400 bytes each on disk.
    let t = Tunnel::start(&outbound(
        &vendor.url("/hooks"),
        dir.path(),
        "spool_max = 1500\nmax_body = 1000\n",
    ));
    let status = t.broker.as_ref().expect("running").status().clone();
    let broker = SocketAddr::from(([127, 0, 0, 1], status.outbound_port.load(Ordering::Relaxed)));
    let mut accepted = 0;
    let mut refused = None;
    for n in 0..20 {
        let a = send(broker, n);
        match a.status {
            202 => accepted += 1,
            503 => {
                assert_eq!(a.retry_after.as_deref(), Some("30"), "{a:?}");
                refused = Some(n);
                break;
            }
            other => panic!("unexpected {other}: {a:?}"),
        }
    }
    assert!(
        refused.is_some() && accepted >= 2,
        "accepted {accepted}, then {refused:?}"
    );
    vendor.set_mode(Mode::Up);
    poll_until(
        Duration::from_secs(20),
        "every accepted event delivered",
        || vendor.received().len() >= accepted,
    );
    assert_eq!(deliveries(&vendor), expected(accepted));
    // Room again: the SCM's retry of the refused one is accepted and delivered.
    let n = refused.unwrap_or_default();
    assert_eq!(send(broker, n).status, 202);
    poll_until(
        Duration::from_secs(10),
        "the retried event delivered",
        || vendor.received().len() > accepted,
    );
    assert_eq!(deliveries(&vendor), expected(accepted + 1));
}

#[test]
fn deliveries_to_an_address_inside_the_tunnel_go_through_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = Tunnel::start(&outbound(
        &format!("http://{}/hooks", crate::harness::VENDOR_IP),
        dir.path(),
        "",
    ));
    let status = t.broker.as_ref().expect("running").status().clone();
    let broker = SocketAddr::from(([127, 0, 0, 1], status.outbound_port.load(Ordering::Relaxed)));
    let served = t.gateway.stats.served;
    for n in 0..3 {
        assert_eq!(send(broker, n).status, 202);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.gateway.stats.served < served + 3 && std::time::Instant::now() < deadline {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    assert_eq!(t.gateway.stats.served, served + 3);
    let port = status.admin_port.load(Ordering::Relaxed);
    poll_until(Duration::from_secs(5), "three delivered", || {
        metric(port, "wgbroker_webhooks_delivered_total{relay=\"github\"}") == Some(3.0)
    });
}

/// A `wgbroker run` process with `[outbound]` (its peer never answers: the relay does not need
/// the tunnel for a direct destination).
fn run_broker(dir: &std::path::Path, destination: &str, port: u16) -> Child {
    let key = PrivateKey::generate().expect("rng");
    let peer = PrivateKey::generate().expect("rng").public_key();
    let wg = WireguardToml::new(&key, "10.77.0.2")
        .peer(PeerToml::new(peer, "127.0.0.1:9", "10.77.0.1/32"))
        .render();
    let text = format!(
        "{wg}\n[admin]\nenabled = false\n[runtime]\ncpus = [0]\n{}",
        outbound(destination, &dir.join("spool"), "").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\"")
        )
    );
    let file = dir.join("broker.toml");
    std::fs::write(&file, text).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "wgbroker=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("broker.log")).expect("create broker.log"))
        .spawn()
        .expect("spawn wgbroker run")
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port()
}

#[test]
fn a_broker_killed_with_events_in_its_spool_delivers_them_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = MockVendor::start(Mode::Unavailable).expect("vendor");
    let port = free_tcp_port();
    let broker = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = run_broker(dir.path(), &vendor.url("/hooks"), port);
    poll_until(Duration::from_secs(20), "the webhook listener", || {
        std::net::TcpStream::connect(broker).is_ok()
    });
    for n in 0..4 {
        assert_eq!(send(broker, n).status, 202);
    }
    poll_until(Duration::from_secs(10), "a failed delivery", || {
        vendor.refused() >= 1
    });
    // SIGKILL: no drain, no clean-up.
    child.kill().expect("kill");
    let _ = child.wait();
    assert!(vendor.received().is_empty());
    vendor.set_mode(Mode::Up);
    let mut child = run_broker(dir.path(), &vendor.url("/hooks"), port);
    // A broker that exits instead (it could not start on a loaded machine, or its port was
    // taken meanwhile) says why, rather than the wait timing out with nothing to go on.
    poll_for(
        Duration::from_secs(20),
        "the spooled events delivered",
        || {
            let log = || std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default();
            if let Ok(Some(exit)) = child.try_wait() {
                panic!("the restarted broker exited ({exit}): {}", log());
            }
            let got = vendor.received().len();
            if got >= 4 {
                Ok(())
            } else {
                Err(format!("{got} of 4 delivered; broker log: {}", log()))
            }
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(deliveries(&vendor), expected(4));
}

#[test]
fn explain_webhook_names_the_relay_and_the_filter_that_decide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = PrivateKey::generate().expect("rng");
    let wg = WireguardToml::new(&key, "10.77.0.2")
        .peer(PeerToml::new(
            PrivateKey::generate().expect("rng").public_key(),
            "127.0.0.1:9",
            "10.77.0.1/32",
        ))
        .render();
    let config = dir.path().join("b.toml");
    let text = format!(
        "{wg}\n{}[[outbound.relay.when]]\npointer = \"/ref\"\nprefix = \"refs/heads/\"\n",
        outbound(
            "https://hooks.vendor.example/gh",
            &dir.path().join("spool"),
            ""
        )
    );
    std::fs::write(&config, text).expect("write");
    let run = |args: &[&str], body: &[u8]| {
        let file = dir.path().join("payload.json");
        std::fs::write(&file, body).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
            .arg("explain-webhook")
            .arg("-c")
            .arg(&config)
            .args(args)
            .arg(&file)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let body = push_body(1);
    let sig = format!(
        "X-Hub-Signature-256: {}",
        wgbroker::relay::verify::sign_sha256(SECRET, &body)
    );
    let (code, out) = run(
        &[
            "--relay",
            "github",
            "-H",
            "X-GitHub-Event: push",
            "-H",
            &sig,
        ],
        &body,
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("signature: valid") && out.contains("RELAYED"),
        "{out}"
    );
    let tag = br#"{"ref":"refs/tags/v1","commits":[]}"#;
    let (code, out) = run(&["--relay", "github", "-H", "X-GitHub-Event: push"], tag);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("signature: not checked"), "{out}");
    assert!(
        out.contains(r#"FILTERED OUT by when[0] pointer "/ref" prefix"#),
        "{out}"
    );
    assert!(
        !out.contains("refs/tags/v1"),
        "no body text is printed: {out}"
    );
    let (code, out) = run(&["--relay", "github", "-H", "X-GitHub-Event: ping"], &body);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FILTERED OUT by events"), "{out}");
    let (code, out) = run(&["--relay", "nope"], &body);
    assert_eq!(code, Some(2), "{out}");

    // A spooled event: its relay is its directory, its headers are in the file.
    let (spool, _) =
        wgbroker::relay::spool::Spool::open(&dir.path().join("spool"), 1 << 20).expect("spool");
    let ev = wgbroker::relay::spool::Event {
        received_ms: 1,
        event: Some("push".into()),
        delivery: Some("d-1".into()),
        headers: vec![("X-GitHub-Event".into(), b"push".to_vec())],
        body: body.clone(),
    };
    let entry = spool.append("github", &ev).expect("append");
    let evt = dir
        .path()
        .join("spool/github")
        .join(format!("{:016x}.evt", entry.seq));
    let out = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .args(["explain-webhook", "-c"])
        .arg(&config)
        .arg(&evt)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("spooled event") && text.contains("relay \"github\""),
        "{text}"
    );
}

/// Sends raw bytes to the webhook listener; returns the status of the first answer.
fn raw(broker: SocketAddr, bytes: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(broker).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn chunked_bodies_are_read_and_oversized_ones_refused_before_they_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = MockVendor::start(Mode::Up).expect("vendor");
    let t = Tunnel::start(&outbound(
        &vendor.url("/hooks"),
        dir.path(),
        "max_body = 1000\n",
    ));
    let status = t.broker.as_ref().expect("running").status().clone();
    let broker = SocketAddr::from(([127, 0, 0, 1], status.outbound_port.load(Ordering::Relaxed)));
    let body = push_body(7);
    let sig = wgbroker::relay::verify::sign_sha256(SECRET, &body);
    let (a, b) = body.split_at(10);
    let mut req = format!(
        "POST /relay/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n\
         X-GitHub-Delivery: delivery-0\r\nX-Hub-Signature-256: {sig}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for part in [a, b] {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(broker, &req), 202);
    poll_until(
        Duration::from_secs(10),
        "the chunked event delivered",
        || !vendor.received().is_empty(),
    );
    assert_eq!(vendor.received()[0].body, body, "reassembled unchanged");
    // A Content-Length over max_body is refused from the head alone (no body sent at all).
    let head = b"POST /relay/github HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n";
    assert_eq!(raw(broker, head), 413);
}

#[test]
fn a_reload_adds_changes_and_removes_relays_and_loses_no_spooled_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = MockVendor::start(Mode::Up).expect("vendor");
    let other_vendor = MockVendor::start(Mode::Up).expect("vendor");
    let base = outbound(&vendor.url("/hooks"), dir.path(), "");
    let mut t = Tunnel::start(&base);
    let started = t.reload_config(&t.config_text).config;
    let status = t.broker.as_ref().expect("running").status().clone();
    let broker = SocketAddr::from(([127, 0, 0, 1], status.outbound_port.load(Ordering::Relaxed)));
    let port = status.admin_port.load(Ordering::Relaxed);
    let issue = br#"{"action":"opened"}"#;
    let issues = |delivery: &str| {
        post(
            broker,
            "github",
            &github_headers("issues", delivery, issue, SECRET),
            issue,
        )
        .expect("post")
    };
    assert_eq!(send(broker, 0).status, 202);
    assert_eq!(issues("i-0").status, 200, "filtered before the reload");

    // Reload 1: `github` also relays `issues`, a new relay `other` appears, timings change.
    let other = format!(
        "[[outbound.relay]]\nname = \"other\"\ndestination_url = \"{}\"\nscm = \"none\"\n",
        other_vendor.url("/other")
    );
    let changed = format!(
        "{}{other}",
        base.replace(
            "events = [\"push\", \"pull_request\"]",
            "events = [\"push\", \"pull_request\", \"issues\"]"
        )
        .replace("retry_max = \"100ms\"", "retry_max = \"200ms\"")
    );
    let text = format!("{}\n{changed}", t.config_text.replace(&base, ""));
    assert_eq!(t.reload(&started, &text), Vec::<String>::new());
    assert_eq!(issues("i-1").status, 202, "the changed filter applies");
    let a = post(broker, "other", &[], b"{}").expect("post");
    assert_eq!(a.status, 202, "the added relay takes webhooks: {a:?}");
    poll_until(Duration::from_secs(10), "the added relay delivers", || {
        other_vendor.received().len() == 1
    });
    poll_until(Duration::from_secs(10), "github delivers", || {
        vendor.received().len() == 2
    });
    assert_eq!(
        metric(port, "wgbroker_webhooks_accepted_total{relay=\"github\"}"),
        Some(2.0),
        "a kept relay keeps its counters"
    );
    assert_eq!(
        metric(port, "wgbroker_webhooks_delivered_total{relay=\"other\"}"),
        Some(1.0)
    );

    // Reload 2, while the vendor is down with an event spooled: `github` removed.
    vendor.set_mode(Mode::Unavailable);
    assert_eq!(send(broker, 1).status, 202);
    let relays_at = base.find("[[outbound.relay]]").expect("a relay");
    let without = format!(
        "{}{}{other}",
        t.config_text.replace(&base, ""),
        &base[..relays_at]
    );
    assert_eq!(t.reload(&started, &without), Vec::<String>::new());
    assert_eq!(
        send(broker, 2).status,
        404,
        "a removed relay takes no webhook"
    );
    assert_eq!(
        metric(port, "wgbroker_webhooks_accepted_total{relay=\"github\"}"),
        None,
        "a removed relay leaves /metrics"
    );
    vendor.set_mode(Mode::Up);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        vendor.received().len(),
        2,
        "a removed relay delivers nothing"
    );
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("github"))
        .expect("relay dir")
        .collect();
    assert_eq!(kept.len(), 1, "its spooled event is kept: {kept:?}");

    // Reload 3: `github` back: the kept event is delivered.
    assert_eq!(t.reload(&started, &text), Vec::<String>::new());
    poll_until(Duration::from_secs(10), "the kept event delivered", || {
        vendor.received().len() == 3
    });
    assert_eq!(deliveries(&vendor)[2], "delivery-1");
}

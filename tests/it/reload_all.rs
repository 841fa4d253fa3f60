//! A reload under load (issue 15, part 3): the CA file re-read, the log level and a peer's
//! keepalive changed, a second peer removed and a third added while requests flow through the
//! tunnel to an HTTPS upstream; no request fails, the new CA is in force for the next
//! connection, and nothing waits for a restart.

use std::io::{Read, Write};
use std::net::TcpListener;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wgbroker::service::{self, Reloaded};
use wgbroker::testkit::client::{self, Request, RunOptions};

use crate::harness::Tunnel;

/// A CA and a certificate for 127.0.0.1 signed by it: (CA PEM, server config).
fn pki(name: &str) -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, name);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("leaf");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .expect("leaf cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone()], key)
        .expect("server config");
    (ca_cert.pem(), Arc::new(server))
}

/// An HTTPS server on loopback answering `200 ok` (one request per connection) with whichever
/// certificate `current` holds when the connection comes in; counts the requests it answers.
fn https_server(current: Arc<Mutex<Arc<rustls::ServerConfig>>>) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for tcp in l.incoming().flatten() {
            let cfg = current.lock().expect("lock").clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                    return;
                };
                let mut s = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                let _ = s.flush();
                count.fetch_add(1, Ordering::Relaxed);
                s.conn.send_close_notify();
                let _ = s.flush();
            });
        }
    });
    (port, served)
}

fn get_all(t: &mut Tunnel, url: &str, conns: usize, per_conn: usize) -> Vec<String> {
    let reqs = (0..conns)
        .map(|_| (0..per_conn).map(|_| Request::get(url)).collect())
        .collect();
    client::run(
        &mut t.gateway,
        reqs,
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(60),
            keep_bodies: false,
        },
    )
    .into_iter()
    .flatten()
    .map(|e| match e.response {
        Ok(r) if r.status == 200 => "200".to_owned(),
        Ok(r) => format!("status {}", r.status),
        Err(e) => e,
    })
    .collect()
}

#[test]
fn a_reload_under_load_rereads_the_ca_file_and_fails_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca1, server1) = pki("reload test CA 1");
    let (ca2, server2) = pki("reload test CA 2");
    let current = Arc::new(Mutex::new(server1));
    let (port, served) = https_server(current.clone());
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca1).expect("write ca");
    // A second gateway (nobody listens there) to remove, and a third to add, by the reload.
    let other_peer = |key: &str, net: &str| {
        let public = wgbroker::keys::PrivateKey::from_bytes([key.len() as u8; 32]).public_key();
        format!(
            "[[wireguard.peers]]\npublic_key = \"{public}\"\nendpoint = \"127.0.0.1:9\"\n\
             allowed_ips = [\"{net}\"]\n"
        )
    };
    let (second, third) = (
        other_peer("b", "10.98.0.0/24"),
        other_peer("cc", "10.99.0.0/24"),
    );
    let extra = format!(
        "[upstream]\nca_files = [{:?}]\nuse_env_proxy = false\n[log]\nlevel = \"info\"\n\
         [[allow]]\nurl = \"https://127.0.0.1:{port}/*\"\nmethods = [\"GET\"]\n{second}",
        ca_file.display().to_string()
    );
    let mut t = Tunnel::start(&extra);
    let url = format!("/proxy/https://127.0.0.1:{port}/x");
    assert_eq!(get_all(&mut t, &url, 1, 1), ["200"], "CA 1 is trusted");

    // The reloaded configuration: both CAs in the same file, debug logging, another keepalive,
    // the second gateway out and a third in, another congestion controller for new tunnel
    // connections.
    let text = t
        .config_text
        .replace("level = \"info\"", "level = \"debug\"")
        .replace("persistent_keepalive = 0", "persistent_keepalive = 25")
        .replace(&second, &third)
        + "\n[netstack]\ncongestion = \"newreno\"\n";
    assert!(text.contains(&third) && !text.contains(&second));
    assert_ne!(text, t.config_text);
    let started = t.reload_config(&t.config_text).config;
    let (total, before) = (16 * 20, served.load(Ordering::Relaxed));
    let broker = t.broker.take().expect("running");
    let new = t.reload_config(&text);
    let (results, (outcome, at_reload, broker)) = std::thread::scope(|s| {
        let served = &served;
        let ca_file = &ca_file;
        let (ca1, ca2) = (&ca1, &ca2);
        let reloader = s.spawn(move || {
            // Under load: once the upstream has answered 40 of this batch.
            while served.load(Ordering::Relaxed) < before + 40 {
                std::thread::yield_now();
            }
            std::fs::write(ca_file, format!("{ca1}{ca2}")).expect("rewrite ca");
            let outcome = service::reload(&broker, &started, Ok(new));
            (outcome, served.load(Ordering::Relaxed) - before, broker)
        });
        let results = get_all(&mut t, &url, 16, 20);
        (results, reloader.join().expect("reloader"))
    });
    t.broker = Some(broker);
    let failed: Vec<&String> = results.iter().filter(|r| *r != "200").collect();
    assert!(
        failed.is_empty(),
        "{} of {total} failed: {failed:?}",
        failed.len()
    );
    assert!(
        at_reload < total,
        "the reload happened while requests flowed ({at_reload})"
    );
    match outcome {
        Reloaded::Loaded {
            swapped,
            needs_restart,
            ..
        } => {
            assert!(swapped.is_ok(), "{swapped:?}");
            // Peers (their stream supervisors with them), CA file and log level applied.
            assert_eq!(needs_restart, Vec::<String>::new());
        }
        Reloaded::Invalid(e) => panic!("{e}"),
    }

    // The upstream now presents CA 2's certificate: trusted only through the re-read file.
    *current.lock().expect("lock") = server2;
    let after = get_all(&mut t, &url, 2, 5);
    assert!(after.iter().all(|r| r == "200"), "{after:?}");
}

#[test]
fn a_heartbeat_added_by_a_reload_runs_without_a_restart() {
    let mut t = Tunnel::start("");
    let status = t.broker.as_ref().expect("running").status().clone();
    let started = t.reload_config(&t.config_text).config;
    let text = format!(
        "{}\n[heartbeat]\nurl = \"http://10.77.0.1/ping\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
        t.config_text
    );
    assert_eq!(
        t.reload(&started, &text),
        Vec::<String>::new(),
        "applied, not pending"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status.heartbeats_ok.load(Ordering::Relaxed) < 2 && std::time::Instant::now() < deadline {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    assert!(
        status.heartbeats_ok.load(Ordering::Relaxed) >= 2,
        "heartbeats: {} served by the gateway",
        t.gateway.stats.served
    );
    assert!(status.heartbeat_passing.load(Ordering::Relaxed));
}

/// Opens a raw connection from the vendor gateway to the broker's HTTP endpoint.
fn open_raw(t: &mut Tunnel) -> wgbroker::netstack::ConnId {
    use wgbroker::netstack::State;
    let to = std::net::SocketAddr::new(t.gateway.broker_address(), 80);
    let id = t.gateway.stack().connect(to).expect("connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.gateway.stack().state(id) != State::Established {
        assert!(std::time::Instant::now() < deadline, "no connection");
        t.gateway.pump(Duration::from_millis(5)).expect("pump");
    }
    id
}

/// Whether the broker has closed `id` (end of stream or reset).
fn closed(t: &mut Tunnel, id: wgbroker::netstack::ConnId) -> bool {
    use wgbroker::netstack::ConnError;
    let mut buf = [0u8; 512];
    loop {
        match t.gateway.stack().recv_slice(id, &mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(ConnError::Finished | ConnError::InvalidState | ConnError::Gone) => return true,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Issue 15 §3: `[inbound]` timeouts reload without a restart; connections opened from then
/// on take the new ones, open ones keep theirs.
#[test]
fn inbound_timeouts_reload_for_new_connections() {
    let mut t = Tunnel::start("[inbound]\nidle_timeout = \"60s\"\n");
    let started = t.reload_config(&t.config_text).config;
    let old = open_raw(&mut t);
    // Served once, so the broker has surely accepted it before the reload: it is an open
    // connection with the old settings, idle between requests.
    let ask = b"GET /healthcheck HTTP/1.1\r\nHost: 10.77.0.2\r\n\r\n";
    assert_eq!(
        t.gateway.stack().send_slice(old, ask).expect("send"),
        ask.len()
    );
    let mut answer = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !answer.windows(4).any(|w| w == b"\"OK\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer: {answer:?}"
        );
        t.gateway.pump(Duration::from_millis(5)).expect("pump");
        let mut buf = [0u8; 512];
        if let Ok(n) = t.gateway.stack().recv_slice(old, &mut buf) {
            answer.extend_from_slice(&buf[..n]);
        }
    }
    let text = t
        .config_text
        .replace("idle_timeout = \"60s\"", "idle_timeout = \"1s\"");
    assert_ne!(text, t.config_text);
    assert_eq!(
        t.reload(&started, &text),
        Vec::<String>::new(),
        "applied, not pending"
    );
    let fresh = open_raw(&mut t);
    let opened = std::time::Instant::now();
    // A generous bound for a 1 s timeout on a shared machine (the old setting was 60 s).
    while !closed(&mut t, fresh) {
        assert!(
            opened.elapsed() < Duration::from_secs(10),
            "a new idle connection was not closed after the reloaded 1 s"
        );
        t.gateway.pump(Duration::from_millis(5)).expect("pump");
    }
    eprintln!(
        "reload: new idle connection closed after {:?}",
        opened.elapsed()
    );
    assert!(!closed(&mut t, old), "the open connection keeps its 60 s");
}

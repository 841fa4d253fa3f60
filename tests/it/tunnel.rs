//! The data plane end to end, in process: a vendor gateway (boringtun + smoltcp from the test
//! kit) over loopback UDP, the broker's glommio executors on the other side.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wgbroker::testkit::client::{self, Request, RunOptions};

use crate::harness::{Tunnel, admin_get, metric, poll_until, spread_args};

fn healthchecks(t: &mut Tunnel, conns: usize, per_conn: usize) {
    let plan = (0..conns)
        .map(|_| {
            (0..per_conn)
                .map(|_| Request::get("/healthcheck"))
                .collect()
        })
        .collect();
    let results = client::run(
        &mut t.gateway,
        plan,
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(30),
            keep_bodies: true,
        },
    );
    let mut ok = 0;
    for (i, conn) in results.iter().enumerate() {
        assert_eq!(conn.len(), per_conn, "connection {i}");
        for ex in conn {
            let r = ex
                .response
                .as_ref()
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert_eq!(r.status, 200);
            assert_eq!(r.body, wgbroker::server::HEALTHCHECK_BODY);
            assert_eq!(r.header("content-length"), Some("4"));
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
            ok += 1;
        }
    }
    assert_eq!(ok, conns * per_conn);
}

#[test]
fn many_connections_get_healthcheck_answers() {
    let mut t = Tunnel::start("");
    healthchecks(&mut t, 200, 3);
    // The broker saw them all.
    let status = t.broker.as_ref().expect("running").status().clone();
    poll_until(Duration::from_secs(5), "200 connections counted", || {
        status.connections.load(Ordering::Relaxed) >= 200
    });
    // The tunnel core publishes its handshake count with its timer tick (every 100 ms); with
    // batched I/O the 600 requests above can finish before the first tick after the handshake.
    poll_until(Duration::from_secs(5), "the handshake counted", || {
        status.handshakes.load(Ordering::Relaxed) >= 1
    });
}

#[test]
fn one_cpu_runs_tunnel_and_shard_on_one_executor() {
    // Also the plain sendmmsg path: GSO off.
    let mut t = Tunnel::start("[runtime]\ncpus = [0]\nudp_gso = false\n");
    healthchecks(&mut t, 50, 2);
}

/// The split layout (tunnel core and shards on their own executors, packets handed over
/// cross-thread rings) is the default with three or more CPUs; ask for it explicitly here.
#[test]
fn split_tunnel_core_and_shards_serve_too() {
    let mut t = Tunnel::start("[runtime]\nshards = 2\npin = false\n");
    healthchecks(&mut t, 100, 2);
    let status = t.broker.as_ref().expect("running").status().clone();
    assert_eq!(status.beats().len(), 3, "a tunnel core and two shards");
}

#[test]
fn unknown_paths_get_404_and_stop_is_prompt() {
    let mut t = Tunnel::start("");
    let results = client::run(
        &mut t.gateway,
        vec![vec![Request::get("/nope"), Request::get("/healthcheck")]],
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(10),
            keep_bodies: true,
        },
    );
    let r = results[0][0].response.as_ref().expect("response");
    assert_eq!(r.status, 404);
    assert_eq!(
        results[0][1].response.as_ref().expect("response").status,
        200
    );
    let broker = t.broker.take().expect("running");
    let started = Instant::now();
    broker.shutdown().expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        started.elapsed()
    );
}

#[test]
fn heartbeat_reaches_the_gateway_through_the_tunnel() {
    let mut t = Tunnel::start(
        "[heartbeat]\nurl = \"http://10.77.0.1/ping\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
    );
    let status = t.broker.as_ref().expect("running").status().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.gateway.stats.served < 2 && Instant::now() < deadline {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    assert!(
        t.gateway.stats.served >= 2,
        "heartbeats served: {}",
        t.gateway.stats.served
    );
    // Give the broker a moment to record the result of the last one.
    let deadline = Instant::now() + Duration::from_secs(2);
    while status
        .heartbeats_ok
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
        && Instant::now() < deadline
    {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    assert!(
        status
            .heartbeats_ok
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert!(
        status
            .heartbeat_passing
            .load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A CA and a certificate for the gateway's tunnel address (an IP SAN: the heartbeat URL names
/// the gateway by address), as the gateway's TLS configuration and the CA's PEM file in `dir`.
fn gateway_pki(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("wgbroker {name} CA"));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec![crate::harness::VENDOR_IP.to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .expect("leaf cert");
    let ca_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .expect("server cert");
    (ca_file, Arc::new(cfg))
}

/// A broker whose `https://` heartbeat goes to a gateway serving TLS with a certificate of the
/// `gateway` CA, while the broker trusts the `trusted` CA file (plus the system roots).
fn tls_heartbeat_tunnel(dir: &std::path::Path, same_ca: bool) -> Tunnel {
    let (gateway_ca, server) = gateway_pki(dir, "gateway");
    let trusted = if same_ca {
        gateway_ca
    } else {
        gateway_pki(dir, "other").0
    };
    Tunnel::start_with(
        &format!(
            "[heartbeat]\nurl = \"https://{}/ping\"\ninterval = \"1s\"\ntimeout = \"2s\"\n\
             [upstream]\nca_files = [\"{}\"]\n",
            crate::harness::VENDOR_IP,
            trusted.display()
        ),
        |g| {
            // https:// without a port: 443.
            g.serve_port = 443;
            g.serve_tls = Some(server);
        },
    )
}

#[test]
fn https_heartbeat_verifies_the_gateway_with_the_upstream_roots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = tls_heartbeat_tunnel(dir.path(), true);
    let status = t.broker.as_ref().expect("running").status().clone();
    let port = status.admin_port.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (t.gateway.stats.served < 2 || status.heartbeats_ok.load(Ordering::Relaxed) < 2)
        && Instant::now() < deadline
    {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    assert!(
        t.gateway.stats.served >= 2,
        "heartbeats served over TLS: {} ({:?})",
        t.gateway.stats.served,
        admin_get(port, "/readyz")
    );
    assert!(status.heartbeats_ok.load(Ordering::Relaxed) >= 2);
    assert_eq!(status.heartbeats_failed.load(Ordering::Relaxed), 0);
    assert_eq!(admin_get(port, "/readyz"), (200, "ready\n".to_owned()));
}

#[test]
fn https_heartbeat_to_a_certificate_of_an_unknown_ca_fails_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = tls_heartbeat_tunnel(dir.path(), false);
    let status = t.broker.as_ref().expect("running").status().clone();
    let port = status.admin_port.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status.heartbeats_failed.load(Ordering::Relaxed) < 1 && Instant::now() < deadline {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    assert!(
        status.heartbeats_failed.load(Ordering::Relaxed) >= 1,
        "the TLS failure counts as a failed heartbeat"
    );
    assert_eq!(status.heartbeats_ok.load(Ordering::Relaxed), 0);
    assert_eq!(t.gateway.stats.served, 0, "no request before verification");
    let (code, body) = admin_get(port, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("heartbeat failing") && body.contains("UnknownIssuer"),
        "the reason is given: {body}"
    );
}

/// GET on the admin listener: (status code, body).
#[test]
fn admin_listener_serves_metrics_and_probes() {
    let mut t = Tunnel::start("");
    healthchecks(&mut t, 3, 2);
    let status = t.broker.as_ref().expect("running").status().clone();
    let port = status.admin_port.load(std::sync::atomic::Ordering::Relaxed);
    assert_ne!(port, 0);
    assert_eq!(admin_get(port, "/healthz"), (200, "ok\n".to_owned()));
    // The tunnel core publishes the handshake with its next timer tick (100 ms).
    poll_until(
        Duration::from_secs(3),
        "/readyz 200: handshake fresh, no heartbeat configured",
        || admin_get(port, "/readyz").0 == 200,
    );
    assert_eq!(admin_get(port, "/probes/readiness").0, 200);
    assert_eq!(admin_get(port, "/nope").0, 404);
    // The shards publish their counters about every 100 ms: wait for the six healthchecks.
    poll_until(Duration::from_secs(3), "six healthchecks counted", || {
        metric(port, r#"wgbroker_outcomes_total{outcome="healthcheck"}"#) >= Some(6.0)
    });
    let (code, text) = admin_get(port, "/metrics");
    assert_eq!(code, 200);
    // A Prometheus text parser reads it, typed: counters, gauges and the latency histogram.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format");
    let kind = |m: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == m)
            .map(|s| s.value.clone())
    };
    assert!(
        matches!(kind("wgbroker_handshakes_total"), Some(prometheus_parse::Value::Counter(v)) if v >= 1.0)
    );
    assert!(matches!(kind("wgbroker_ready"), Some(prometheus_parse::Value::Gauge(v)) if v == 1.0));
    assert!(matches!(
        kind("wgbroker_proxy_latency_seconds"),
        Some(prometheus_parse::Value::Histogram(_))
    ));
    assert!(scrape.docs.contains_key("wgbroker_outcomes_total"));
    // Every sample line is `name{labels} value` with a number, and every family is typed.
    let mut samples = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').expect("name value");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let base = name.split('{').next().expect("family");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                base.strip_suffix(suffix)
                    .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            })
            .unwrap_or(base);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} untyped"
        );
        samples.insert(name.to_owned(), v);
    }
    assert!(samples["wgbroker_handshakes_total"] >= 1.0);
    assert!(samples["wgbroker_connections_total"] >= 3.0);
    assert_eq!(samples["wgbroker_ready"], 1.0);
    let requests: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("wgbroker_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(requests >= 6.0, "{text}");
    assert!(
        samples["wgbroker_outcomes_total{outcome=\"healthcheck\"}"] >= 6.0,
        "{text}"
    );
    // The latency histogram is well formed: buckets are cumulative and end at the count.
    let count = samples["wgbroker_proxy_latency_seconds_count"];
    assert_eq!(
        samples["wgbroker_proxy_latency_seconds_bucket{le=\"+Inf\"}"],
        count
    );
}

#[test]
fn readiness_follows_the_heartbeat() {
    // The heartbeat target answers nothing (no gateway pump while we look): not ready.
    let t = Tunnel::start(
        "[heartbeat]\nurl = \"http://10.77.0.1/ping\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n",
    );
    let status = t.broker.as_ref().expect("running").status().clone();
    let port = status.admin_port.load(std::sync::atomic::Ordering::Relaxed);
    poll_until(
        Duration::from_secs(10),
        "/readyz 503 naming the heartbeat",
        || {
            let (code, body) = admin_get(port, "/readyz");
            code == 503 && body.contains("heartbeat")
        },
    );
    let (code, body) = admin_get(port, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("heartbeat failing"), "{body}");
}

#[test]
fn readiness_flips_with_the_handshake() {
    use wgbroker::keys::PrivateKey;
    use wgbroker::testkit::gateway::{Gateway, GatewayConfig};
    let broker_key = PrivateKey::generate().expect("rng");
    let vendor_key = PrivateKey::generate().expect("rng");
    let mut gw = Gateway::bind(&GatewayConfig::new(
        vendor_key.clone(),
        broker_key.public_key(),
        crate::harness::VENDOR_IP.parse().expect("ip"),
        crate::harness::BROKER_IP.parse().expect("ip"),
    ))
    .expect("gateway");
    let toml = crate::harness::broker_toml(
        &broker_key,
        &vendor_key.public_key().to_string(),
        gw.local_addr().expect("addr"),
        "",
    );
    let broker = crate::harness::start_broker(&toml);
    let port = broker
        .status()
        .admin_port
        .load(std::sync::atomic::Ordering::Relaxed);
    // The gateway is not pumped yet, so the broker's initiation goes unanswered however long
    // we look: no handshake, not ready (no sleep needed to make that true).
    let (code, body) = admin_get(port, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("no WireGuard handshake yet"), "{body}");
    assert_eq!(admin_get(port, "/healthz").0, 200, "alive all the same");
    // Now it answers: ready once the handshake is published.
    assert!(gw.wait_handshake(Duration::from_secs(20)));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut ready = admin_get(port, "/readyz");
    while ready.0 != 200 && Instant::now() < deadline {
        gw.pump(Duration::from_millis(20)).expect("pump");
        ready = admin_get(port, "/readyz");
    }
    assert_eq!(ready.0, 200, "{ready:?}");
    broker.shutdown().expect("stop");
}

/// Garbage on the broker's UDP socket — random bytes, truncated WireGuard headers, datagrams
/// longer than any the tunnel MTU allows, a burst larger than one receive batch — is counted and
/// dropped, and the tunnel keeps serving.
#[test]
fn garbage_datagrams_are_dropped_and_the_tunnel_keeps_serving() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut t = Tunnel::start("");
    healthchecks(&mut t, 2, 1);
    let status = t.broker.as_ref().expect("running").status().clone();
    let port = status.udp_port.load(Relaxed);
    assert_ne!(port, 0);
    let dropped_before = status.datagrams_dropped.load(Relaxed);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = ("127.0.0.1", port);
    let mut sent_garbage = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..300usize {
        // xorshift: reproducible noise of varying length, some with a valid message type byte.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = 1 + (seed as usize % 200);
        let mut d: Vec<u8> = (0..len).map(|k| (seed >> (k % 56)) as u8).collect();
        d[0] = (i % 6) as u8; // 1..4 are WireGuard message types
        sock.send_to(&d, to).expect("send");
        sent_garbage += 1;
    }
    let oversize = [2_000usize, 9_000, 65_000];
    for len in oversize {
        sock.send_to(&vec![4u8; len], to).expect("send");
    }
    // Every datagram is either dropped by the peer table or counted as oversize; wait for the
    // tunnel core to read them all (it publishes drops with its 100 ms timer tick).
    poll_until(
        Duration::from_secs(5),
        "every garbage and oversize datagram counted",
        || {
            status.datagrams_dropped.load(Relaxed) - dropped_before >= sent_garbage
                && status.oversize.load(Relaxed) >= oversize.len() as u64
        },
    );
    assert_eq!(
        status.oversize.load(Relaxed),
        oversize.len() as u64,
        "oversize datagrams counted exactly once"
    );
    assert!(status.rx_batches.load(Relaxed) > 0);
    healthchecks(&mut t, 20, 3);
}

/// The CPUs each `wgbroker-core-<n>` executor thread of this process may run on, as the kernel
/// lists them (`Cpus_allowed_list` of the thread).
fn core_executor_cpus() -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("wgbroker-core") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            out.push(list.trim().to_owned());
        }
    }
    out
}

/// In-process test brokers are pinned (as brokers run by default), but not all to the same CPU:
/// with every test's executor on CPU 0 the suite's brokers queued behind each other there while
/// the other CPUs ran only test threads.
#[test]
fn test_brokers_are_pinned_but_spread_over_the_cpus() {
    let cpus = wgbroker::runtime::placement::available_cpus();
    let (a, b) = (Tunnel::start(""), Tunnel::start(""));
    let pinned = core_executor_cpus();
    assert!(pinned.len() >= 2, "two core executors running: {pinned:?}");
    assert!(
        pinned.iter().all(|l| !l.contains([',', '-'])),
        "each pinned to one CPU: {pinned:?}"
    );
    if cpus.len() > 1 {
        let distinct: std::collections::BTreeSet<_> = pinned.iter().collect();
        assert!(distinct.len() > 1, "all on one CPU: {pinned:?}");
    }
    drop((a, b));
}

/// Subprocess test brokers are spread like in-process ones: each `wgbroker run` gets an overlay
/// naming the next CPU as its tunnel core's; a config that places itself is left as written.
#[test]
fn subprocess_brokers_are_given_the_cpus_in_turn() {
    let cpus = wgbroker::runtime::placement::available_cpus();
    let dir = tempfile::tempdir().expect("tempdir");
    let own = dir.path().join("broker.toml");
    std::fs::write(&own, "[log]\nlevel = \"error\"\n").expect("write");
    let cpu_of = |args: &[std::ffi::OsString]| -> usize {
        assert_eq!(args.len(), 2, "-c FILE: {args:?}");
        let text = std::fs::read_to_string(&args[1]).expect("overlay");
        let n = text.trim().rsplit(' ').next().expect("a number");
        n.parse().unwrap_or_else(|_| panic!("{text}"))
    };
    let firsts: Vec<usize> = (0..cpus.len().max(2))
        .map(|_| cpu_of(&spread_args(&own)))
        .collect();
    assert!(
        firsts.iter().all(|c| cpus.contains(c)),
        "{firsts:?} not in {cpus:?}"
    );
    if cpus.len() > 1 {
        let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
        assert!(distinct.len() > 1, "all on one CPU: {firsts:?}");
    }
    let placed = dir.path().join("placed.toml");
    std::fs::write(&placed, "[runtime]\ncpus = [0]\n").expect("write");
    assert!(spread_args(&placed).is_empty());
}

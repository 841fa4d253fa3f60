//! `wgbroker gateway` end to end: an in-process gateway, real broker processes on loopback
//! (tenant "a" with two brokers, tenant "b" with one, each tenant its own private upstream),
//! vendor requests through the front door.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wgbroker::config::LoadMode;
use wgbroker::config::gateway::{GatewayConfig, load_str};
use wgbroker::keys::PrivateKey;
use wgbroker::runtime::gateway::{BROKER_HEADER, GatewayHandle};
use wgbroker::testkit::scm::MockScm;

use crate::harness::{poll_for, poll_until};

const TOKEN_A: &str = "ghp_tenantA0123456789abcdefABCDEF0123456";
const TOKEN_B: &str = "ghp_tenantB0123456789abcdefABCDEF0123456";
/// Tunnel addresses of brokers a1, a2, b1.
const ADDRS: [&str; 3] = ["10.77.1.2", "10.77.1.3", "10.77.2.2"];

/// A gateway, three broker processes and the two tenants' upstreams.
struct Fleet {
    scm_a: MockScm,
    scm_b: MockScm,
    gateway: Option<GatewayHandle>,
    _admin: Option<wgbroker::gateway_service::AdminServer>,
    front: SocketAddr,
    brokers: Vec<Child>,
    _dir: tempfile::TempDir,
    /// The configuration the gateway started with.
    config: GatewayConfig,
    gw_key: PrivateKey,
}

impl Fleet {
    fn start() -> Self {
        Self::start_with("", "")
    }

    /// As [`Fleet::start`], with `gateway_keys` added to `[gateway]` and `broker_extra` to each
    /// broker's file.
    fn start_with(gateway_keys: &str, broker_extra: &str) -> Self {
        let scm_a = MockScm::start(TOKEN_A).expect("mock a");
        let scm_b = MockScm::start(TOKEN_B).expect("mock b");
        let gw_key = PrivateKey::generate().expect("rng");
        let keys: Vec<PrivateKey> = (0..3)
            .map(|_| PrivateKey::generate().expect("rng"))
            .collect();
        let text = format!(
            r#"
[gateway]
private_key = "{}"
listen = "127.0.0.1:0"
address = "10.77.0.1"
front = "127.0.0.1:0"
{gateway_keys}
[[tenant]]
name = "a"
[[tenant.broker]]
public_key = "{}"
address = "{}"
[[tenant.broker]]
public_key = "{}"
address = "{}"
[[tenant]]
name = "b"
[[tenant.broker]]
public_key = "{}"
address = "{}"
[admin]
listen = "127.0.0.1:0"
"#,
            gw_key.to_base64(),
            keys[0].public_key(),
            ADDRS[0],
            keys[1].public_key(),
            ADDRS[1],
            keys[2].public_key(),
            ADDRS[2],
        );
        let config: GatewayConfig = load_str(
            &[(PathBuf::from("gateway.toml"), text)],
            LoadMode::Full,
            &|_: &str| None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
        let (gateway, admin) = wgbroker::gateway_service::start(&config).expect("gateway starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut brokers = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let (scm, token) = if i < 2 {
                (scm_a.addr(), TOKEN_A)
            } else {
                (scm_b.addr(), TOKEN_B)
            };
            brokers.push(spawn_broker(
                dir.path(),
                key,
                ADDRS[i],
                &gw_key,
                gateway.udp_addr,
                scm,
                token,
                broker_extra,
            ));
        }
        let front = gateway.front_addr;
        let fleet = Self {
            scm_a,
            scm_b,
            gateway: Some(gateway),
            _admin: admin,
            front,
            brokers,
            _dir: dir,
            config,
            gw_key,
        };
        poll_until(Duration::from_secs(30), "every broker in rotation", || {
            (0..3).all(|i| fleet.healthy(i))
        });
        fleet
    }

    fn healthy(&self, i: usize) -> bool {
        self.gateway
            .as_ref()
            .and_then(|g| g.status.broker(i))
            .is_some_and(|b| b.healthy.load(Ordering::Relaxed))
    }

    /// Starts one more broker process with `key` at tunnel address `addr`, for `scm`.
    fn add_broker(&mut self, key: &PrivateKey, addr: &str, scm: SocketAddr, token: &str) {
        let udp = self.gateway.as_ref().expect("running").udp_addr;
        let child = spawn_broker(
            self._dir.path(),
            key,
            addr,
            &self.gw_key,
            udp,
            scm,
            token,
            "",
        );
        self.brokers.push(child);
    }

    fn reload(&self, config: GatewayConfig) {
        self.gateway.as_ref().expect("running").reload(config);
    }

    fn kill(&mut self, i: usize) {
        let _ = self.brokers[i].kill();
        let _ = self.brokers[i].wait();
    }
}

/// A broker process with `key` at tunnel address `addr`, dialing the gateway at `udp`, for the
/// upstream `scm` with `token`; `extra` is appended to its file.
#[allow(clippy::too_many_arguments)]
fn spawn_broker(
    dir: &std::path::Path,
    key: &PrivateKey,
    addr: &str,
    gw_key: &PrivateKey,
    udp: SocketAddr,
    scm: SocketAddr,
    token: &str,
    extra: &str,
) -> Child {
    let toml = format!(
        r#"
[wireguard]
private_key = "{}"
address = "{}"
[[wireguard.peers]]
public_key = "{}"
endpoint = "{}"
allowed_ips = ["10.77.0.1/32"]
persistent_keepalive = 5
[heartbeat]
url = "http://10.77.0.1/heartbeat"
interval = "1s"
[admin]
listen = "127.0.0.1:0"
[runtime]
pin = false
[[scm]]
type = "github"
base_url = "http://{scm}/api/v3"
token = "{token}"
[[allow]]
url = "http://{scm}/upload"
methods = ["POST"]
[[allow]]
url = "http://{scm}/download/:n"
methods = ["GET"]
[[allow]]
url = "http://{scm}/chunked/:n"
methods = ["GET"]
[[allow]]
url = "http://{scm}/slow/:n"
methods = ["GET", "POST"]
{extra}
"#,
        key.to_base64(),
        addr,
        gw_key.public_key(),
        udp,
    );
    let file = dir.join(format!("broker-{addr}.toml"));
    std::fs::write(&file, toml).expect("write");
    let log = std::fs::File::create(dir.join(format!("broker-{addr}.log"))).expect("log");
    Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .args(["run", "-c"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn broker")
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for b in &mut self.brokers {
            let _ = b.kill();
            let _ = b.wait();
        }
        if let Some(g) = self.gateway.take() {
            g.stop();
        }
    }
}

/// A response as the vendor saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn broker(&self) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(BROKER_HEADER).then(|| v.trim())
        })
    }
}

/// One request on its own connection to the front door.
fn request(front: SocketAddr, method: &str, target: &str) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(front)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head: {text:?}")))?;
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok(Answer {
        status,
        headers: headers.to_owned(),
        body: body.to_owned(),
    })
}

fn repo_url(scm: &MockScm, repo: &str) -> String {
    format!("http://{}/api/v3/repos/acme/{repo}", scm.addr())
}

#[test]
fn gateway_routes_each_tenant_to_its_own_brokers_and_spreads_the_load() {
    let f = Fleet::start();
    let mut served_by = std::collections::BTreeSet::new();
    for i in 0..12 {
        let a = request(
            f.front,
            "GET",
            &format!("/t/a/proxy/{}", repo_url(&f.scm_a, &format!("app{i}"))),
        )
        .expect("answer");
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.body.contains(&format!("acme/app{i}")), "{a:?}");
        served_by.insert(a.broker().expect("broker header").to_owned());
    }
    assert_eq!(
        served_by.into_iter().collect::<Vec<_>>(),
        ["a/10.77.1.2", "a/10.77.1.3"],
        "tenant a's requests spread over both of its brokers"
    );
    assert!(
        f.scm_a
            .seen()
            .iter()
            .all(|s| s.header("authorization") == Some(&format!("Bearer {TOKEN_A}"))),
        "tenant a's upstream saw tenant a's token"
    );

    let b = request(
        f.front,
        "GET",
        &format!("/t/b/proxy/{}", repo_url(&f.scm_b, "x")),
    )
    .expect("answer");
    assert_eq!((b.status, b.broker()), (200, Some("b/10.77.2.2")), "{b:?}");
    assert_eq!(
        f.scm_b
            .seen()
            .last()
            .and_then(|s| s.header("authorization").map(str::to_owned)),
        Some(format!("Bearer {TOKEN_B}"))
    );

    // Tenant b's upstream through tenant a: a's brokers know nothing of it.
    let before = f.scm_b.seen().len();
    let forged = request(
        f.front,
        "GET",
        &format!("/t/a/proxy/{}", repo_url(&f.scm_b, "x")),
    )
    .expect("answer");
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(
        forged.broker().is_some_and(|b| b.starts_with("a/")),
        "{forged:?}"
    );
    assert_eq!(
        f.scm_b.seen().len(),
        before,
        "nothing reached tenant b's upstream"
    );

    let unknown = request(f.front, "GET", "/t/c/proxy/http://x/").expect("answer");
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let nowhere = request(f.front, "GET", "/proxy/http://x/").expect("answer");
    assert_eq!(nowhere.status, 404, "{nowhere:?}");

    let health = request(f.front, "GET", "/t/b/healthcheck").expect("answer");
    assert_eq!(
        (health.status, health.broker()),
        (200, Some("b/10.77.2.2")),
        "{health:?}"
    );

    let g = f.gateway.as_ref().expect("running");
    poll_until(
        Duration::from_secs(10),
        "a broker heartbeat answered",
        || g.status.heartbeats.load(Ordering::Relaxed) > 0,
    );
}

/// What one client request came to.
#[derive(Debug)]
struct Outcome {
    started: Instant,
    result: Result<(u16, String), String>,
}

/// Front-door clients sending GETs back to back until stopped, each on its own connection per
/// request: `a_clients` for tenant a (repos `r0`, `r1`, ...), then one for tenant b.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(f: &Fleet, a_clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..=a_clients {
            let (tenant, url) = if c < a_clients {
                ("a", repo_url(&f.scm_a, &format!("r{c}")))
            } else {
                ("b", repo_url(&f.scm_b, "r"))
            };
            let (front, stop) = (f.front, stop.clone());
            clients.push(std::thread::spawn(move || {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = request(front, "GET", &format!("/t/{tenant}/proxy/{url}"))
                        .map(|a| (a.status, a.broker().unwrap_or("").to_owned()))
                        .map_err(|e| e.to_string());
                    out.push(Outcome { started, result });
                }
                out
            }));
        }
        Self { stop, clients }
    }

    /// Stops the clients; what each one's requests came to, tenant a's clients first.
    fn stop(self) -> Vec<Vec<Outcome>> {
        self.stop.store(true, Ordering::Relaxed);
        self.clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect()
    }
}

#[test]
fn killing_one_of_a_tenants_brokers_under_load_fails_nothing_that_had_not_reached_it() {
    let mut f = Fleet::start();
    let load = Load::start(&f, 8);
    // Steady load on both of a's brokers first.
    let a_requests = || {
        f.gateway.as_ref().map_or(0, |g| {
            (0..2)
                .filter_map(|i| g.status.broker(i))
                .map(|b| b.answered.load(Ordering::Relaxed).min(1))
                .sum::<u64>()
        })
    };
    poll_until(
        Duration::from_secs(20),
        "both of a's brokers answering",
        || a_requests() == 2,
    );
    let killed_at = Instant::now();
    f.kill(0);
    poll_until(
        Duration::from_secs(5),
        "the dead broker out of rotation",
        || !f.healthy(0),
    );
    let out_after = killed_at.elapsed();
    // Load for a while after the failover.
    while killed_at.elapsed() < Duration::from_secs(7) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let results = load.stop();

    let a: Vec<&Outcome> = results[..8].iter().flatten().collect();
    let b: Vec<&Outcome> = results[8].iter().collect();
    let failed: Vec<&&Outcome> = a
        .iter()
        .filter(|o| !matches!(&o.result, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "requests to tenant a that failed ({} of {}; broker out of rotation after {out_after:?}): {failed:#?}",
        failed.len(),
        a.len()
    );
    let late: Vec<&&Outcome> = a
        .iter()
        .filter(|o| o.started > killed_at + Duration::from_secs(5))
        .collect();
    assert!(!late.is_empty(), "requests after the failover");
    assert!(
        late.iter()
            .all(|o| matches!(&o.result, Ok((200, by)) if by == "a/10.77.1.3")),
        "after 5 s the surviving broker serves tenant a alone"
    );
    assert!(!b.is_empty());
    assert!(
        b.iter()
            .all(|o| matches!(&o.result, Ok((200, by)) if by == "b/10.77.2.2")),
        "tenant b undisturbed: {:?}",
        b.iter().find(|o| !matches!(&o.result, Ok((200, _))))
    );
}

#[test]
fn bodies_stream_both_ways_on_a_kept_alive_front_door_connection() {
    let mut f = Fleet::start();
    let scm = f.scm_a.addr();
    let mut s = TcpStream::connect(f.front).expect("front door");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
    // An upload with a length, one chunked, then downloads with a length and chunked: one
    // connection, each answer framed so that the next request can follow.
    let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let fnv = wgbroker::testkit::scm::fnv1a(&upload, wgbroker::testkit::scm::FNV_INIT);
    write!(
        s,
        "POST /t/a/proxy/http://{scm}/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n",
        upload.len()
    )
    .expect("write");
    s.write_all(&upload).expect("body");
    let (status, _, body) = read_framed(&mut r);
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!(r#"{{"bytes":{},"fnv":"{fnv:016x}"}}"#, upload.len())
    );
    write!(
        s,
        "POST /t/a/proxy/http://{scm}/upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .expect("write");
    for part in upload.chunks(70_000) {
        write!(s, "{:x}\r\n", part.len()).expect("size");
        s.write_all(part).expect("chunk");
        s.write_all(b"\r\n").expect("crlf");
    }
    s.write_all(b"0\r\n\r\n").expect("last chunk");
    let (status, _, body) = read_framed(&mut r);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains(&format!("{fnv:016x}")));
    for (path, n) in [("download/500000", 500_000), ("chunked/200000", 200_000)] {
        write!(
            s,
            "GET /t/a/proxy/http://{scm}/{path} HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        .expect("write");
        let (status, head, body) = read_framed(&mut r);
        assert_eq!(status, 200, "{head}");
        assert_eq!(body.len(), n, "{head}");
        assert!(
            body.iter()
                .enumerate()
                .all(|(i, &b)| b == wgbroker::testkit::scm::pattern_byte(i as u64)),
            "{path}: the body arrived byte for byte"
        );
    }
    // The only broker of b gone: b answers 503 with a JSON reason; a is not disturbed.
    f.kill(2);
    poll_until(Duration::from_secs(5), "b's broker out of rotation", || {
        !f.healthy(2)
    });
    let none = request(
        f.front,
        "GET",
        &format!("/t/b/proxy/{}", repo_url(&f.scm_b, "x")),
    )
    .expect("answer");
    assert_eq!(none.status, 503, "{none:?}");
    let reason: serde_json::Value = serde_json::from_str(&none.body).expect("JSON body");
    assert_eq!(reason["error"], "no healthy broker");
    assert_eq!(reason["tenant"], "b");
    write!(
        s,
        "GET /t/a/proxy/{} HTTP/1.1\r\nHost: gw\r\n\r\n",
        repo_url(&f.scm_a, "still")
    )
    .expect("write");
    assert_eq!(
        read_framed(&mut r).0,
        200,
        "the kept-alive connection serves a"
    );
}

/// Reads one response framed by `Content-Length` or chunked: (status, head, body).
fn read_framed(r: &mut impl std::io::BufRead) -> (u16, String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).expect("read") > 0,
            "closed in the head: {head}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    assert!(
        !header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")),
        "the front door closes after: {head}"
    );
    let mut body = Vec::new();
    if let Some(n) = header("content-length") {
        body.resize(n.parse().expect("length"), 0);
        r.read_exact(&mut body).expect("body");
    } else if header("transfer-encoding").is_some() {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).expect("chunk");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        panic!("an unframed response: {head}");
    }
    (status, head, body)
}

#[test]
fn loadtest_drives_the_front_door() {
    let f = Fleet::start();
    let target = format!("/t/a/proxy/{}", repo_url(&f.scm_a, "load"));
    let out = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .args(["loadtest", "--front"])
        .arg(f.front.to_string())
        .args(["--front-target", &target])
        .args(["--connections", "2", "--duration", "1s", "--json"])
        .output()
        .expect("loadtest runs");
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(
        report["requests"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");
    assert!(
        report["latency_ms"]["p99"]
            .as_f64()
            .is_some_and(|p| p > 0.0),
        "{report}"
    );
    // Both of a's brokers carried the load.
    let g = f.gateway.as_ref().expect("running");
    assert!(
        (0..2)
            .filter_map(|i| g.status.broker(i))
            .all(|b| b.answered.load(Ordering::Relaxed) > 0),
        "the load spread over a's brokers"
    );
}

#[test]
fn demo_gateway_shows_a_failover() {
    let out = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .args(["demo", "--gateway"])
        .output()
        .expect("demo runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("served by acme/10.77.1.2"), "{text}");
    assert!(text.contains("served by acme/10.77.1.3"), "{text}");
    assert!(
        text.contains("failed over to its other broker without a failed request"),
        "{text}"
    );
}

/// The `key: |` blocks of the ConfigMaps in a manifest: (key, text).
fn configmap_files(yaml: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in yaml.lines() {
        if let Some((_, text)) = current.as_mut() {
            if let Some(l) = line.strip_prefix("    ") {
                text.push_str(l);
                text.push('\n');
                continue;
            }
            if line.trim().is_empty() {
                text.push('\n');
                continue;
            }
            out.extend(current.take());
        }
        if let Some(key) = line
            .strip_prefix("  ")
            .and_then(|l| l.strip_suffix(": |"))
            .filter(|k| k.ends_with(".toml"))
        {
            current = Some((key.to_owned(), String::new()));
        }
    }
    out.extend(current);
    out
}

#[test]
fn the_kubernetes_manifests_carry_valid_configurations() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
    let env = |_: &str| None;
    let broker = std::fs::read_to_string(root.join("broker.yaml")).expect("broker.yaml");
    let files = configmap_files(&broker);
    let common = files
        .iter()
        .find(|(k, _)| k == "common.toml")
        .map(|(_, t)| t.clone())
        .expect("common.toml");
    let mut brokers = 0;
    for (key, text) in files.iter().filter(|(k, _)| k.starts_with("wgbroker-")) {
        // As the Deployment's args overlay them; the key and token files exist only in a pod.
        let loaded = wgbroker::config::load_str(
            &[
                (PathBuf::from(key), text.clone()),
                (PathBuf::from("common.toml"), common.clone()),
            ],
            LoadMode::Policy,
            &env,
        )
        .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(loaded.config.heartbeat.is_some());
        assert!(
            broker.contains(&format!("\"/etc/wgbroker/conf/{key}\"")),
            "a Deployment runs {key}"
        );
        brokers += 1;
    }
    assert_eq!(brokers, 2, "two brokers by default");
    let gateway = std::fs::read_to_string(root.join("gateway.yaml")).expect("gateway.yaml");
    let files = configmap_files(&gateway);
    assert_eq!(files.len(), 1);
    let loaded = load_str(
        &[(PathBuf::from("gateway.toml"), files[0].1.clone())],
        LoadMode::Policy,
        &env,
    )
    .unwrap_or_else(|e| panic!("gateway.toml: {e}"));
    assert_eq!(loaded.config.brokers().count(), 2);
}

#[test]
fn check_and_dump_read_a_gateway_configuration_from_a_pipe() {
    let key = PrivateKey::generate().expect("rng");
    let text = wgbroker::config::gateway::EXAMPLE.replace(
        r#"{ credential = "wgbroker-gateway.key" }"#,
        &format!("{:?}", key.to_base64()),
    );
    for (command, expect) in [
        (
            "check",
            "gateway configuration OK: 2 tenant(s), 3 broker(s)".to_owned(),
        ),
        ("dump", format!("public_key = \"{}\"", key.public_key())),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
            .args([command, "-c", "/dev/stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("ends");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command}: {out:?}");
        assert!(stdout.contains(&expect), "{command}: {stdout}");
        assert!(
            !stdout.contains(&key.to_base64()),
            "{command} shows no private key"
        );
    }
}

/// A port free for both TCP and UDP on loopback, below the ephemeral range: a port of that
/// range, once released, can be taken again at any time as the source port of some
/// connection (a broker's to its upstream, say), and a gateway restarted on it would fail.
fn free_port() -> u16 {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    // Tests run in parallel in one process: each call starts further on, so that two tests
    // do not both find the same port before either binds it (the gateway process does).
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let offset = CALLS.fetch_add(97, Ordering::Relaxed) % 7919;
    let start = 10_000 + ((std::process::id() as u16 % 7919) + offset) % 7919;
    (start..low)
        .chain(10_000..start)
        .find(|&p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        })
        .expect("a free port below the ephemeral range")
}

/// Two different ports free below the ephemeral range: a gateway process's WireGuard port
/// (UDP and TCP) and its front door.
fn gateway_ports() -> (u16, u16) {
    let udp = free_port();
    let _held = std::net::UdpSocket::bind(("127.0.0.1", udp));
    let _held_tcp = std::net::TcpListener::bind(("127.0.0.1", udp));
    (udp, free_port())
}

/// A gateway process's file: WireGuard on `udp`, the front door on `front`, one tenant with
/// one broker, `extra` keys in `[gateway]`, info logs.
fn gateway_process_toml(
    gw_key: &PrivateKey,
    (udp, front): (u16, u16),
    tenant: &str,
    broker_key: &PrivateKey,
    broker_addr: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[gateway]
private_key = "{}"
listen = "127.0.0.1:{udp}"
address = "10.77.0.1"
front = "127.0.0.1:{front}"
{extra}
[[tenant]]
name = "{tenant}"
[[tenant.broker]]
public_key = "{}"
address = "{broker_addr}"
[admin]
listen = "127.0.0.1:0"
[log]
level = "info"
"#,
        gw_key.to_base64(),
        broker_key.public_key(),
    )
}

/// Issue 18, our own gateway: a `wgbroker gateway` process is killed and started again on the
/// same ports with the same key. It has forgotten every session and cannot reach its broker;
/// the broker notices (nothing answers what it sends, its heartbeat fails), probes with a fresh
/// handshake and retries every 1-2 s, so the tenant is served again within 5 s of the gateway
/// being back, by the same broker process.
#[test]
fn gateway_process_restart_is_served_again_within_5_s() {
    let scm = MockScm::start(TOKEN_A).expect("mock");
    let gw_key = PrivateKey::generate().expect("rng");
    let broker_key = PrivateKey::generate().expect("rng");
    let (udp, front) = gateway_ports();
    let dir = tempfile::tempdir().expect("tempdir");
    let gw_file = dir.path().join("gateway.toml");
    std::fs::write(
        &gw_file,
        gateway_process_toml(&gw_key, (udp, front), "a", &broker_key, ADDRS[0], ""),
    )
    .expect("write");
    let broker_file = dir.path().join("broker.toml");
    std::fs::write(
        &broker_file,
        format!(
            r#"
[wireguard]
private_key = "{}"
address = "{}"
[[wireguard.peers]]
public_key = "{}"
endpoint = "127.0.0.1:{udp}"
allowed_ips = ["10.77.0.1/32"]
persistent_keepalive = 5
[heartbeat]
url = "http://10.77.0.1/heartbeat"
interval = "1s"
[admin]
listen = "127.0.0.1:0"
[runtime]
pin = false
[log]
level = "info"
[[scm]]
type = "github"
base_url = "http://{}/api/v3"
token = "{TOKEN_A}"
"#,
            broker_key.to_base64(),
            ADDRS[0],
            gw_key.public_key(),
            scm.addr(),
        ),
    )
    .expect("write");
    let spawn = |args: &[&std::ffi::OsStr], log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).expect("log");
        Command::new(env!("CARGO_BIN_EXE_wgbroker"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn")
    };
    let mut gateway = spawn(
        &["gateway".as_ref(), "-c".as_ref(), gw_file.as_os_str()],
        "gw1.log",
    );
    let mut broker = spawn(
        &["run".as_ref(), "-c".as_ref(), broker_file.as_os_str()],
        "broker.log",
    );
    let front: SocketAddr = format!("127.0.0.1:{front}").parse().expect("address");
    let target = format!("/t/a/proxy/{}", repo_url(&scm, "r"));
    let served = || request(front, "GET", &target).is_ok_and(|a| a.status == 200);
    let logs = || {
        ["gw1.log", "broker.log"]
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .join("\n---\n")
    };
    poll_for(Duration::from_secs(30), "the tenant served", || {
        if served() { Ok(()) } else { Err(logs()) }
    });

    let _ = gateway.kill();
    let _ = gateway.wait();
    // Started again until it runs: the kernel releases a killed io_uring process's sockets a
    // little after the process is gone (the ring's teardown is deferred), so the first attempts
    // may find the ports still taken and exit, as under a supervisor's restart. The gateway is
    // back once it says so (its sockets are bound then). Not by connecting to the front door: a
    // connection to a port nobody listens on can connect to itself and take the port.
    let mut attempts = 0;
    let mut gateway = spawn(
        &["gateway".as_ref(), "-c".as_ref(), gw_file.as_os_str()],
        "gw2.log",
    );
    poll_for(Duration::from_secs(10), "the gateway started again", || {
        let log = std::fs::read_to_string(dir.path().join("gw2.log")).unwrap_or_default();
        if log.contains("gateway.start") {
            return Ok(());
        }
        if let Ok(Some(status)) = gateway.try_wait() {
            attempts += 1;
            gateway = spawn(
                &["gateway".as_ref(), "-c".as_ref(), gw_file.as_os_str()],
                "gw2.log",
            );
            return Err(format!("attempt {attempts}: {status}: {log}"));
        }
        Err(log)
    });
    eprintln!("gateway: started again after {attempts} failed attempt(s)");
    let back = Instant::now();
    let logs = || {
        ["gw1.log", "gw2.log", "broker.log"]
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .join("\n---\n")
    };
    poll_for(
        Duration::from_secs(5),
        "the tenant served through the restarted gateway",
        || if served() { Ok(()) } else { Err(logs()) },
    );
    eprintln!(
        "gateway: served again {:?} after the gateway was back",
        back.elapsed()
    );
    assert!(
        broker.try_wait().expect("try_wait").is_none(),
        "the broker exited"
    );
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = gateway.kill();
    let _ = gateway.wait();
}

#[test]
fn a_reload_adding_a_tenant_with_its_broker_makes_it_served() {
    let mut f = Fleet::start();
    let key = PrivateKey::generate().expect("rng");
    let url = repo_url(&f.scm_b, "r");
    let target = format!("/t/c/proxy/{url}");
    let before = request(f.front, "GET", &target).expect("front door");
    assert_eq!(
        before.status, 404,
        "c is not configured yet: {}",
        before.body
    );
    let mut config = f.config.clone();
    let mut c = config.tenant[1].clone();
    c.name = "c".into();
    c.broker[0].public_key = key.public_key();
    c.broker[0].address = "10.77.3.2".parse().expect("address");
    config.tenant.push(c);
    f.reload(config);
    let scm = f.scm_b.addr();
    f.add_broker(&key, "10.77.3.2", scm, TOKEN_B);
    let served = poll_for(
        Duration::from_secs(30),
        "tenant c served",
        || match request(f.front, "GET", &target) {
            Ok(a) if a.status == 200 => Ok(a),
            Ok(a) => Err(format!("{} {}", a.status, a.body)),
            Err(e) => Err(e.to_string()),
        },
    );
    assert_eq!(served.broker(), Some("c/10.77.3.2"));
    // The others are undisturbed, each still on its own brokers.
    let a = request(
        f.front,
        "GET",
        &format!("/t/a/proxy/{}", repo_url(&f.scm_a, "r")),
    )
    .expect("front door");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.broker().is_some_and(|b| b.starts_with("a/")),
        "{:?}",
        a.broker()
    );
    let metrics = wgbroker::gateway_service::metrics(&f.gateway.as_ref().expect("running").status);
    assert!(
        metrics.contains(r#"wgbroker_gateway_broker_healthy{tenant="c",broker="10.77.3.2"} 1"#),
        "{metrics}"
    );
}

#[test]
fn a_reload_removing_a_tenant_answers_404_for_it() {
    let f = Fleet::start();
    let target = format!("/t/b/proxy/{}", repo_url(&f.scm_b, "r"));
    assert_eq!(request(f.front, "GET", &target).expect("front").status, 200);
    let mut config = f.config.clone();
    config.tenant.truncate(1);
    f.reload(config);
    let gone = poll_for(
        Duration::from_secs(10),
        "tenant b removed",
        // A request routed just before the reload and picking a broker just after it finds
        // none (503); from then on the tenant is unknown (404).
        || match request(f.front, "GET", &target) {
            Ok(a) if a.status == 404 => Ok(a),
            Ok(a) => Err(format!("{} {}", a.status, a.body)),
            Err(e) => Err(e.to_string()),
        },
    );
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert!(gone.body.contains("unknown tenant"), "{}", gone.body);
    let a = request(
        f.front,
        "GET",
        &format!("/t/a/proxy/{}", repo_url(&f.scm_a, "r")),
    )
    .expect("front door");
    assert_eq!(a.status, 200, "{}", a.body);
    // A request that was on b's broker when the reload came finishes there (drain); the broker
    // leaves `/metrics` at the timer turn after it ends.
    let g = f.gateway.as_ref().expect("running");
    poll_until(Duration::from_secs(5), "b out of /metrics", || {
        !wgbroker::gateway_service::metrics(&g.status).contains(r#"tenant="b""#)
    });
}

#[test]
fn a_reload_removing_a_broker_under_load_fails_no_request() {
    let f = Fleet::start();
    let load = Load::start(&f, 6);
    let g = f.gateway.as_ref().expect("running");
    poll_until(
        Duration::from_secs(20),
        "both of a's brokers answering",
        || {
            (0..2)
                .filter_map(|i| g.status.broker(i))
                .all(|b| b.answered.load(Ordering::Relaxed) > 0)
        },
    );
    let mut config = f.config.clone();
    config.tenant[0].broker.remove(0);
    f.reload(config);
    poll_until(Duration::from_secs(5), "the reload applied", || {
        g.status.reloads.load(Ordering::Relaxed) == 1
    });
    let applied = Instant::now();
    while applied.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let results = load.stop();
    let all: Vec<&Outcome> = results.iter().flatten().collect();
    let failed: Vec<&&Outcome> = all
        .iter()
        .filter(|o| !matches!(&o.result, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "failed ({} of {}): {failed:#?}",
        failed.len(),
        all.len()
    );
    let a_late: Vec<&Outcome> = results[..6]
        .iter()
        .flatten()
        .filter(|o| o.started > applied)
        .collect();
    assert!(!a_late.is_empty(), "requests after the reload");
    assert!(
        a_late
            .iter()
            .all(|o| matches!(&o.result, Ok((200, by)) if by == "a/10.77.1.3")),
        "after the reload only the kept broker serves a"
    );
    assert!(
        results[6]
            .iter()
            .all(|o| matches!(&o.result, Ok((200, by)) if by == "b/10.77.2.2")),
        "tenant b undisturbed"
    );
    let metrics = wgbroker::gateway_service::metrics(&g.status);
    assert!(!metrics.contains(r#"broker="10.77.1.2""#), "{metrics}");
}

/// Issue 16, the pool: a request after another to the same broker goes down the tunnel
/// connection the first one left open instead of a new one.
#[test]
fn a_second_request_to_a_broker_reuses_its_kept_alive_tunnel_connection() {
    let f = Fleet::start();
    let g = f.gateway.as_ref().expect("running");
    let b1 = g.status.broker(2).expect("b1");
    let url = repo_url(&f.scm_b, "r");
    for _ in 0..2 {
        let a = request(f.front, "GET", &format!("/t/b/proxy/{url}")).expect("answer");
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.broker(), Some("b/10.77.2.2"));
        // Kept before the client's connection is closed: the response had ended.
        assert_eq!(b1.idle.load(Ordering::Relaxed), 1, "kept for the next");
    }
    assert_eq!(b1.connections_opened.load(Ordering::Relaxed), 1);
    assert_eq!(b1.connections_reused.load(Ordering::Relaxed), 1);
    assert_eq!(f.scm_b.seen().len(), 2, "both reached the upstream");
    let metrics = wgbroker::gateway_service::metrics(&g.status);
    assert!(
        metrics.contains(
            r#"wgbroker_gateway_broker_connections_reused_total{tenant="b",broker="10.77.2.2"} 1"#
        ),
        "{metrics}"
    );
}

/// Issue 16, the pool: a kept-alive connection the broker closed while it was idle (its
/// `[inbound] idle_timeout`, here 1 s) is not used: a non-idempotent request that comes after
/// goes on a new connection and succeeds.
#[test]
fn a_kept_alive_connection_its_broker_closed_fails_no_request() {
    let f = Fleet::start_with("", "[inbound]\nidle_timeout = \"1s\"");
    let g = f.gateway.as_ref().expect("running");
    let b1 = g.status.broker(2).expect("b1");
    let url = repo_url(&f.scm_b, "r");
    let a = request(f.front, "GET", &format!("/t/b/proxy/{url}")).expect("answer");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(b1.idle.load(Ordering::Relaxed), 1);
    poll_until(
        Duration::from_secs(10),
        "the broker closing the idle connection, seen by the gateway",
        || b1.idle_closed_by_broker.load(Ordering::Relaxed) == 1,
    );
    assert_eq!(b1.idle.load(Ordering::Relaxed), 0);
    let upload = format!("http://{}/upload", f.scm_b.addr());
    let a = request(f.front, "POST", &format!("/t/b/proxy/{upload}")).expect("answer");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(b1.connections_opened.load(Ordering::Relaxed), 2);
    assert_eq!(b1.connections_reused.load(Ordering::Relaxed), 0);
    assert_eq!(
        f.scm_b
            .seen_handle()
            .count(|s| s.method == "POST" && s.target == "/upload"),
        1
    );
}

/// Issue 16, the pool: a POST whose kept-alive connection broke off after its bytes were sent
/// (here the broker's answer outlasts `response_timeout`) may have been acted on: it is answered
/// 502 and sent to no broker again — not on a new connection, not to the tenant's other broker.
#[test]
fn a_post_whose_kept_alive_connection_broke_after_its_bytes_were_sent_is_not_sent_again() {
    let f = Fleet::start_with("response_timeout = \"2s\"", "");
    let g = f.gateway.as_ref().expect("running");
    let a = [
        g.status.broker(0).expect("a1"),
        g.status.broker(1).expect("a2"),
    ];
    let url = repo_url(&f.scm_a, "r");
    for _ in 0..10 {
        if a.iter().all(|b| b.idle.load(Ordering::Relaxed) > 0) {
            break;
        }
        let r = request(f.front, "GET", &format!("/t/a/proxy/{url}")).expect("answer");
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(
        a.iter().all(|b| b.idle.load(Ordering::Relaxed) > 0),
        "both of a's brokers hold a kept-alive connection"
    );
    let count = |b: &wgbroker::runtime::gateway::BrokerCounters| {
        (
            b.requests.load(Ordering::Relaxed),
            b.connections_reused.load(Ordering::Relaxed),
        )
    };
    let before = [count(&a[0]), count(&a[1])];
    let slow = format!("http://{}/slow/6", f.scm_a.addr());
    let r = request(f.front, "POST", &format!("/t/a/proxy/{slow}")).expect("answer");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("broker failed before answering"), "{r:?}");
    let after = [count(&a[0]), count(&a[1])];
    let tried: Vec<usize> = (0..2).filter(|&i| after[i].0 != before[i].0).collect();
    assert_eq!(tried.len(), 1, "one broker tried: {before:?} -> {after:?}");
    let i = tried[0];
    assert_eq!(after[i].0, before[i].0 + 1, "once");
    assert_eq!(after[i].1, before[i].1 + 1, "on a kept-alive connection");
    assert_eq!(
        f.scm_a
            .seen_handle()
            .count(|s| s.method == "POST" && s.target == "/slow/6"),
        1,
        "the upstream saw it once"
    );
}

/// The `/metrics` line of broker `addr` for `series`, if exported.
fn broker_metric(g: &GatewayHandle, series: &str, addr: &str) -> Option<String> {
    let metrics = wgbroker::gateway_service::metrics(&g.status);
    let needle = format!("{series}{{");
    metrics
        .lines()
        .find(|l| l.starts_with(&needle) && l.contains(&format!("broker=\"{addr}\"")))
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
}

/// Issue 16, drain: a broker removed by a reload while a request is in flight on it finishes
/// that request itself (not cut off and sent again to the kept broker); until then it stays in
/// `/metrics` as draining, and a reload that would give its address to another broker is
/// refused (`gateway.reload_refused`, nothing of it applied). Once it has drained it leaves
/// `/metrics` and the same reload applies.
#[test]
fn a_removed_broker_finishes_its_request_and_its_address_is_not_reused_until_it_has() {
    let f = Fleet::start();
    let g = f.gateway.as_ref().expect("running");
    let slow = format!("http://{}/slow/3", f.scm_a.addr());
    let front = f.front;
    let in_flight =
        std::thread::spawn(move || request(front, "GET", &format!("/t/a/proxy/{slow}")));
    let seen = f.scm_a.seen_handle();
    poll_until(
        Duration::from_secs(10),
        "the request at a's upstream",
        || seen.count(|s| s.target == "/slow/3") == 1,
    );
    let x = (0..2)
        .find(|&i| {
            g.status
                .broker(i)
                .is_some_and(|b| b.requests.load(Ordering::Relaxed) == 1)
        })
        .expect("one of a's brokers has it");
    let mut removed = f.config.clone();
    let gone = removed.tenant[0].broker.remove(x);
    f.reload(removed.clone());
    poll_until(Duration::from_secs(5), "the reload applied", || {
        g.status.reloads.load(Ordering::Relaxed) == 1
    });
    let addr = gone.address.to_string();
    assert_eq!(
        broker_metric(g, "wgbroker_gateway_broker_draining", &addr).as_deref(),
        Some("1"),
        "listed as draining while its request runs"
    );
    // Another broker, of tenant b, at the draining broker's address.
    let mut clash = removed.clone();
    let mut newcomer = gone.clone();
    newcomer.public_key = PrivateKey::generate().expect("rng").public_key();
    clash.tenant[1].broker.push(newcomer);
    f.reload(clash.clone());
    poll_until(Duration::from_secs(5), "the reload refused", || {
        g.status.reloads_refused.load(Ordering::Relaxed) == 1
    });
    assert_eq!(g.status.reloads.load(Ordering::Relaxed), 1, "not applied");
    assert!(g.status.broker(3).is_none(), "no slot for the newcomer");

    let answer = in_flight.join().expect("client").expect("answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.broker(), Some(format!("a/{addr}").as_str()));
    assert_eq!(seen.count(|s| s.target == "/slow/3"), 1, "sent once");
    poll_until(Duration::from_secs(5), "drained: out of /metrics", || {
        broker_metric(g, "wgbroker_gateway_broker_requests_total", &addr).is_none()
    });
    f.reload(clash);
    poll_until(Duration::from_secs(5), "the same reload applied", || {
        g.status.reloads.load(Ordering::Relaxed) == 2
    });
    assert_eq!(
        broker_metric(g, "wgbroker_gateway_broker_healthy", &addr).as_deref(),
        Some("0"),
        "the newcomer, checked before it serves: {}",
        wgbroker::gateway_service::metrics(&g.status)
    );
}

/// Sends `sig` (`-STOP`, `-HUP`, ...) to process `pid`.
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Issue 16, reload and isolation: a request of tenant b still connecting to b's broker (the
/// process is stopped, its SYN goes unanswered) when a reload removes b — and adds a tenant c
/// served by one of a's brokers — is answered 503 JSON for b once its connection gives up. It
/// reaches no broker of another tenant, not even the new one.
#[test]
fn a_request_whose_tenant_is_removed_before_it_reached_a_broker_gets_503_not_another_tenants() {
    let f = Fleet::start_with(
        "health_interval = \"60s\"\nhealth_timeout = \"30s\"\nconnect_timeout = \"3s\"",
        "",
    );
    let g = f.gateway.as_ref().expect("running");
    let b1 = g.status.broker(2).expect("b1");
    let b1_pid = f.brokers[2].id();
    signal(b1_pid, "-STOP");
    let front = f.front;
    let url = repo_url(&f.scm_b, "r");
    let caught = std::thread::spawn(move || request(front, "GET", &format!("/t/b/proxy/{url}")));
    poll_until(
        Duration::from_secs(10),
        "b's request connecting to b1",
        || b1.requests.load(Ordering::Relaxed) == 1,
    );
    let mut next = f.config.clone();
    let moved = next.tenant[0].broker.remove(1);
    next.tenant.remove(1);
    next.tenant.push(wgbroker::config::gateway::Tenant {
        name: "c".into(),
        broker: vec![moved],
    });
    f.reload(next);
    poll_until(Duration::from_secs(5), "the reload applied", || {
        g.status.reloads.load(Ordering::Relaxed) == 1
    });
    let c_url = format!("/t/c/proxy/{}", repo_url(&f.scm_a, "r"));
    poll_for(
        Duration::from_secs(10),
        "c served by its broker",
        || match request(front, "GET", &c_url) {
            Ok(a) if a.status == 200 => Ok(a),
            other => Err(format!("{other:?}")),
        },
    );
    let answer = caught.join().expect("client").expect("answer");
    signal(b1_pid, "-CONT");
    assert_eq!(answer.status, 503, "{answer:?}");
    let body: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(body["tenant"], "b", "{body}");
    assert_eq!(body["error"], "no healthy broker", "{body}");
    assert_eq!(answer.broker(), None);
    assert!(f.scm_b.seen().is_empty(), "b's upstream never reached");
}

/// Issue 16, SIGHUP end to end: a `wgbroker gateway` process (`gateway_service::run`) applies a
/// changed file's tenants live on SIGHUP — a removed tenant is unknown (404), an added one known
/// (503 until its broker is up) — names the `[gateway]` key that needs a restart, and on an
/// invalid file keeps what it runs.
#[test]
fn sighup_applies_a_changed_tenant_list_to_a_running_gateway_process() {
    let gw_key = PrivateKey::generate().expect("rng");
    let (k1, k2) = (
        PrivateKey::generate().expect("rng"),
        PrivateKey::generate().expect("rng"),
    );
    let ports = gateway_ports();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gateway.toml");
    let config = |tenant: &str, key: &PrivateKey, extra: &str| {
        gateway_process_toml(&gw_key, ports, tenant, key, "10.77.1.2", extra)
    };
    std::fs::write(&file, config("a", &k1, "")).expect("write");
    let log_path = dir.path().join("gateway.log");
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .args(["gateway", "-c"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn");
    let front: SocketAddr = ([127, 0, 0, 1], ports.1).into();
    let status = |tenant: &str| {
        request(front, "GET", &format!("/t/{tenant}/healthcheck")).map(|a| (a.status, a.body))
    };
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    poll_for(
        Duration::from_secs(10),
        "the front door up",
        || match status("a") {
            Ok((503, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(status("z").expect("answer").0, 404);

    std::fs::write(&file, config("z", &k2, "health_interval = \"2s\"")).expect("write");
    signal(gateway.id(), "-HUP");
    poll_for(
        Duration::from_secs(5),
        "z known after SIGHUP",
        || match status("z") {
            Ok((503, _)) => Ok(()),
            other => Err(format!("{other:?}\n{}", log())),
        },
    );
    let (code, body) = status("a").expect("answer");
    assert_eq!(
        (code, body.contains("unknown tenant")),
        (404, true),
        "{body}"
    );
    let text = log();
    assert!(
        text.lines()
            .any(|l| l.contains("needs_restart") && l.contains("gateway.health_interval")),
        "{text}"
    );
    assert!(text.contains("gateway.reloaded"), "{text}");

    std::fs::write(&file, "[gateway]\nbogus = 1\n").expect("write");
    signal(gateway.id(), "-HUP");
    poll_until(Duration::from_secs(5), "the invalid file reported", || {
        log().contains("config.invalid")
    });
    assert_eq!(status("z").expect("answer").0, 503, "z still served");
    assert_eq!(status("a").expect("answer").0, 404);
    let _ = gateway.kill();
    let _ = gateway.wait();
}

//! The proxy path end to end against real peers: `wireguard-go` + kernel TCP + `curl` in the
//! vendor's namespace, the `wgbroker` binary in the broker's namespace, and a private upstream
//! (`tests/fixtures/upstream.py`, CPython stdlib) on the broker namespace's loopback, plain HTTP
//! and HTTPS with a certificate from a test CA. Only the broker can reach the upstream; every
//! check goes through the tunnel as `curl http://10.77.0.2/proxy/<url>`.
//!
//! Each test starts the same fixture ([`Env`]) and checks one thing, so a failure names what
//! broke; the SIGTERM test replays the traffic whose traces it looks for in the broker's output.
//!
//! Needs root, `ip netns`, `wireguard-go`, `wireguard-tools`, `curl`, `python3` and `sha256sum`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use wgbroker::keys::PrivateKey;
use wgbroker::testkit::toml::{PeerToml, WireguardToml};

use crate::harness::netns::{Pair, sh};
use crate::harness::{poll_for, spread_args};

/// The customer's GitHub token: recognisable, so its absence from the broker's output means
/// something.
const TOKEN: &str = "ghp_interopSECRET_7Qx9Lm2Vw4Zr8Kt6Jn3Hb5Pd1Fs0Gc";
/// Upstream ports on the broker namespace's loopback (the namespace is private to this test).
const HTTP_PORT: u16 = 18080;
const TLS_PORT: u16 = 18443;
/// Nothing listens here: connection refused.
const DEAD_PORT: u16 = 9;
const VENDOR_TUNNEL_IP: &str = "10.77.0.1";
const BROKER_TUNNEL_IP: &str = "10.77.0.2";

/// A child process, killed and reaped on drop.
struct Guard(Option<Child>);

impl Guard {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One curl exchange as the vendor sees it.
struct Reply {
    status: u16,
    /// The final response head (interim 1xx heads dropped).
    head: String,
    body: Vec<u8>,
    /// curl's `time_total` in seconds.
    time_total: f64,
    wall: Duration,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.body[..self.body.len().min(512)];
        write!(
            f,
            "status {} after {:?}\n{}\n\nbody ({} bytes): {}",
            self.status,
            self.wall,
            self.head.trim_end(),
            self.body.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The fixture every test here starts: the two namespaces, the upstream, the broker and their
/// files. Fields drop in order: the broker and the upstream are killed before the namespaces go,
/// and the next test's fixture starts only after that.
struct Env {
    broker: Guard,
    _upstream: Guard,
    pair: Pair,
    dir: tempfile::TempDir,
    upstream_log: PathBuf,
    upstream_err: PathBuf,
    broker_out: PathBuf,
    seq: AtomicU32,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// Held by each [`Env`]: the tests here run one after the other. Each brings up wireguard-go, a
/// Python upstream and a broker process; several at once on a small shared machine would make
/// the timing checks (the 504 after `response_timeout`, the handshake within 15 s) measure the
/// machine rather than the broker. A test that panicked poisons it harmlessly.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A test CA and a server certificate for `localhost` and `127.0.0.1` signed by it, as PEM
/// files in `dir`: (CA, server certificate, server key).
fn write_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "wgbroker interop test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf params");
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .expect("leaf cert");
    let (ca_file, cert_file, key_file) = (
        dir.join("test-ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
    std::fs::write(&cert_file, leaf_cert.pem()).expect("write cert");
    std::fs::write(&key_file, leaf_key.serialize_pem()).expect("write key");
    (ca_file, cert_file, key_file)
}

fn broker_config(
    broker_key: &PrivateKey,
    vendor_public: &str,
    endpoint: &str,
    ca: &Path,
) -> String {
    let wireguard = WireguardToml::new(broker_key, BROKER_TUNNEL_IP)
        .peer(PeerToml::new(
            vendor_public,
            format!("{endpoint}:51820"),
            format!("{VENDOR_TUNNEL_IP}/32"),
        ))
        .render();
    format!(
        r#"
{wireguard}
[[scm]]
type = "github"
base_url = "http://127.0.0.1:{HTTP_PORT}/api/v3"
token = "{TOKEN}"
allow_code_access = true

# A user rule without headers comes first and wins: nothing is injected, the upstream says 401.
[[allow]]
url = "http://127.0.0.1:{HTTP_PORT}/api/v3/uninjected"
methods = ["GET"]

[[allow]]
url = "http://127.0.0.1:{HTTP_PORT}/download/:n"
methods = ["GET"]

[[allow]]
url = "http://127.0.0.1:{HTTP_PORT}/upload"
methods = ["POST"]

[[allow]]
url = "http://127.0.0.1:{HTTP_PORT}/slow/:s"
methods = ["GET"]

[[allow]]
url = "https://localhost:{TLS_PORT}/api/v3/*"
methods = ["GET"]
set_request_headers = {{ Authorization = "Bearer {TOKEN}" }}

[[allow]]
url = "http://127.0.0.1:{DEAD_PORT}/*"
methods = ["GET"]

[upstream]
ca_files = ["{ca}"]
response_timeout = "2s"
connect_timeout = "3s"
use_env_proxy = false

[admin]
listen = "127.0.0.1:0"

[log]
level = "info"
format = "text"
"#,
        ca = ca.display(),
    )
}

impl Env {
    fn start() -> Self {
        let one_at_a_time = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut pair = Pair::new("iop");
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_file, cert_file, key_file) = write_pki(dir.path());
        let upstream_log = dir.path().join("upstream.jsonl");
        let upstream_err = dir.path().join("upstream.err");
        let broker_out = dir.path().join("broker.out");
        std::fs::write(&upstream_log, "").expect("create upstream log");

        // The upstream, inside the broker's namespace.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream.py");
        let broker_ns = pair.broker.clone();
        let (http_port, tls_port) = (HTTP_PORT.to_string(), TLS_PORT.to_string());
        let upstream = pair
            .command(
                &broker_ns,
                &[
                    "python3",
                    path_str(&script),
                    "--http-port",
                    &http_port,
                    "--https-port",
                    &tls_port,
                    "--cert",
                    path_str(&cert_file),
                    "--key",
                    path_str(&key_file),
                    "--token",
                    TOKEN,
                    "--log",
                    path_str(&upstream_log),
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&upstream_err).expect("upstream stderr"))
            .spawn()
            .expect("spawn python3 upstream");
        let mut upstream = Guard(Some(upstream));

        let vendor_key = PrivateKey::generate().expect("rng");
        let broker_key = PrivateKey::generate().expect("rng");
        // An interface name of our own: wireguard-go's control socket path is global, and the
        // other interop test (or another test process) may be running `wg0` right now; the
        // sequence number keeps a fixture clear of the previous one's socket.
        static IF_SEQ: AtomicU32 = AtomicU32::new(0);
        let wg_if = format!(
            "wgp{}x{}",
            std::process::id(),
            IF_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        pair.start_wireguard_go_on(
            &wg_if,
            &vendor_key.to_base64(),
            VENDOR_TUNNEL_IP,
            &broker_key.public_key().to_string(),
            BROKER_TUNNEL_IP,
        );

        // The upstream accepts plain and TLS connections (curl inside the broker namespace,
        // verifying the certificate against the test CA).
        for url in [
            format!("http://127.0.0.1:{HTTP_PORT}/ready"),
            format!("https://localhost:{TLS_PORT}/ready"),
        ] {
            poll_for(
                Duration::from_secs(15),
                &format!("the upstream at {url}"),
                || {
                    let out = pair
                        .command(
                            &broker_ns,
                            &[
                                "curl",
                                "-sS",
                                "--max-time",
                                "2",
                                "--cacert",
                                path_str(&ca_file),
                                "-o",
                                "/dev/null",
                                "-w",
                                "%{http_code}",
                                &url,
                            ],
                        )
                        .output()
                        .expect("curl");
                    if out.stdout == b"404" {
                        return Ok(());
                    }
                    if let Some(Ok(Some(st))) = upstream.0.as_mut().map(Child::try_wait) {
                        panic!(
                            "upstream exited {st}: {}",
                            std::fs::read_to_string(&upstream_err).unwrap_or_default()
                        );
                    }
                    Err(format!(
                        "{}{} / {}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr),
                        std::fs::read_to_string(&upstream_err).unwrap_or_default()
                    ))
                },
            );
        }

        // The broker, output captured to a file.
        let cfg = dir.path().join("broker.toml");
        std::fs::write(
            &cfg,
            broker_config(
                &broker_key,
                &vendor_key.public_key().to_string(),
                &pair.vendor_ip,
                &ca_file,
            ),
        )
        .expect("write config");
        let out = File::create(&broker_out).expect("broker output");
        let started = Instant::now();
        let broker = pair
            .command(
                &broker_ns,
                &[env!("CARGO_BIN_EXE_wgbroker"), "run", "-c", path_str(&cfg)],
            )
            .args(spread_args(&cfg))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn wgbroker");
        let broker = Guard(Some(broker));

        let vendor_ns = pair.vendor.clone();
        poll_for(Duration::from_secs(15), "the vendor's handshake", || {
            let out = pair.exec(&vendor_ns, &["wg", "show", &wg_if, "latest-handshakes"]);
            match out.split_whitespace().nth(1) {
                Some(t) if t != "0" => Ok(()),
                _ => Err(format!(
                    "{out}\n{}",
                    std::fs::read_to_string(&broker_out).unwrap_or_default()
                )),
            }
        });
        eprintln!(
            "interop_proxy: handshake {:?} after the broker started",
            started.elapsed()
        );
        Self {
            broker,
            _upstream: upstream,
            pair,
            dir,
            upstream_log,
            upstream_err,
            broker_out,
            seq: AtomicU32::new(0),
            _one_at_a_time: one_at_a_time,
        }
    }

    /// `curl -X method http://10.77.0.2/proxy/<target>` from the vendor's namespace.
    fn proxy(&self, method: &str, target: &str, extra: &[&str]) -> Reply {
        self.curl_url(
            method,
            &format!("http://{BROKER_TUNNEL_IP}/proxy/{target}"),
            extra,
        )
    }

    fn curl_url(&self, method: &str, url: &str, extra: &[&str]) -> Reply {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let head_file = self.dir.path().join(format!("reply{n}.head"));
        let body_file = self.dir.path().join(format!("reply{n}.body"));
        let mut cmd = self.pair.command(
            &self.pair.vendor,
            &[
                "curl",
                "-sS",
                "--path-as-is",
                "--max-time",
                "60",
                "-X",
                method,
                "-D",
                path_str(&head_file),
                "-o",
                path_str(&body_file),
                "-w",
                "%{http_code} %{time_total}",
            ],
        );
        cmd.args(extra).arg(url);
        let started = Instant::now();
        let out = cmd.output().expect("curl");
        let wall = started.elapsed();
        let w = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {method} {url} failed: {w} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        let mut it = w.split_whitespace();
        let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let time_total = it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let heads = std::fs::read_to_string(&head_file).unwrap_or_default();
        let head = heads
            .split("\r\n\r\n")
            .filter(|h| !h.trim().is_empty())
            .last()
            .unwrap_or_default()
            .to_owned();
        let body = std::fs::read(&body_file).unwrap_or_default();
        let _ = std::fs::remove_file(&head_file);
        let _ = std::fs::remove_file(&body_file);
        Reply {
            status,
            head,
            body,
            time_total,
            wall,
        }
    }

    /// Every request the upstream received so far, one JSON line each.
    fn upstream_seen(&self) -> Vec<String> {
        std::fs::read_to_string(&self.upstream_log)
            .expect("upstream log")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn broker_output(&self) -> String {
        std::fs::read_to_string(&self.broker_out).unwrap_or_default()
    }

    /// The broker's output and the upstream's stderr, for failure messages.
    fn diagnostics(&self) -> String {
        format!(
            "broker output:\n{}\nupstream stderr:\n{}",
            self.broker_output(),
            std::fs::read_to_string(&self.upstream_err).unwrap_or_default()
        )
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Byte `i` of the upstream's `/download/<n>` body.
fn pattern(i: u64) -> u8 {
    ((i.wrapping_mul(31)) ^ (i >> 8)) as u8
}

/// `"name":"value"` in a compact JSON log line.
fn field(name: &str, value: &str) -> String {
    format!(r#""{name}":"{value}""#)
}

/// `["name","value"]` (a header, name lowercase) in an upstream log line.
fn hdr(name: &str, value: &str) -> String {
    format!(r#"["{name}","{value}"]"#)
}

/// `s` without terminal colour sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `sha256sum` on a file.
fn sha256_file(p: &Path) -> String {
    sh(&["sha256sum", path_str(p)])
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_owned()
}

/// Substrings that every base64 encoding (standard or URL-safe, padded or not, at any offset
/// within a longer input such as `user:token`) of `secret` contains.
fn base64_cores(secret: &str) -> Vec<String> {
    let mut cores = Vec::new();
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        for lead in 0..3 {
            let mut input = vec![b'x'; lead];
            input.extend_from_slice(secret.as_bytes());
            let enc = engine.encode(&input);
            // Skip the group that mixes in the lead bytes and the last (possibly partial) group.
            let start = if lead == 0 { 0 } else { 4 };
            cores.push(enc[start..enc.len() - 4].to_owned());
        }
    }
    cores
}

/// The private upstream, then an allowed GET: 200, the private-link header, the token injected
/// by the broker (curl sends none) and the vendor's tunnel address in X-Forwarded-For.
fn allowed_get_carries_the_injected_token(env: &Env) {
    let base = format!("http://127.0.0.1:{HTTP_PORT}");
    let repo = format!("{base}/api/v3/repos/acme/app");
    // The upstream is private: the vendor's namespace cannot reach it directly.
    for url in [
        format!("http://{}:{HTTP_PORT}/ready", env.pair.broker_ip),
        format!("{base}/ready"),
    ] {
        let out = env
            .pair
            .command(&env.pair.vendor, &["curl", "-sS", "--max-time", "3", &url])
            .output()
            .expect("curl");
        assert!(!out.status.success(), "{url} reachable from the vendor");
    }
    let before = env.upstream_seen().len();

    // Allowed GET: 200, the private-link header, the token injected by the broker (curl sends
    // none) and the vendor's tunnel address in X-Forwarded-For.
    let r = env.proxy("GET", &repo, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-semgrep-private-link"), Some("1"), "{}", r.head);
    assert!(
        r.text().contains(r#""full_name":"acme/app""#),
        "{}",
        r.text()
    );
    assert!(!r.text().contains(TOKEN) && !r.head.contains(TOKEN));
    let seen = env.upstream_seen();
    assert_eq!(seen.len(), before + 1, "{seen:#?}");
    let line = &seen[before];
    for want in [
        field("method", "GET"),
        field("path", "/api/v3/repos/acme/app"),
        hdr("authorization", &format!("Bearer {TOKEN}")),
        hdr("x-forwarded-for", VENDOR_TUNNEL_IP),
        hdr("host", &format!("127.0.0.1:{HTTP_PORT}")),
    ] {
        assert!(line.contains(&want), "upstream saw {line}, wanted {want}");
    }
    // The upstream's 401 gate is real: a matching rule that injects nothing gets 401.
    let r = env.proxy("GET", &format!("{base}/api/v3/uninjected"), &[]);
    assert_eq!(r.status, 401, "{r:?}");
    let seen = env.upstream_seen();
    assert!(
        !seen[seen.len() - 1].contains("\"authorization\""),
        "{}",
        seen[seen.len() - 1]
    );
}

/// Denied requests get 403, traversal and ambiguous paths 400; none reaches the upstream.
fn denied_and_malformed_requests_stop_at_the_broker(env: &Env) {
    let base = format!("http://127.0.0.1:{HTTP_PORT}");
    let repo = format!("{base}/api/v3/repos/acme/app");
    // Denied: 403 with the error header and JSON, and nothing reaches the upstream.
    let before = env.upstream_seen().len();
    for (method, target) in [
        ("DELETE", repo.clone()),
        ("GET", format!("{repo}/git/refs")),
        ("GET", format!("{base}/admin")),
        ("POST", format!("{base}/download/1")),
        (
            "GET",
            format!("http://127.0.0.1:{TLS_PORT}/api/v3/repos/acme/app"),
        ),
        ("GET", "http://169.254.169.254/latest/meta-data/".to_owned()),
    ] {
        let r = env.proxy(method, &target, &[]);
        assert_eq!(r.status, 403, "{method} {target}: {r:?}");
        assert_eq!(
            r.header("x-semgrep-private-link-error"),
            Some("1"),
            "{method} {target}: {}",
            r.head
        );
        assert!(
            r.text()
                .starts_with(r#"{"error":"url is not in allowlist""#),
            "{method} {target}: {}",
            r.text()
        );
    }
    let leaked = &env.upstream_seen()[before..];
    assert!(
        leaked.is_empty(),
        "denied requests reached the upstream: {leaked:#?}"
    );

    // Traversal and ambiguous paths: 400, never forwarded (curl --path-as-is sends them raw).
    for target in [
        format!("{base}/api/v3/repos/acme/../admin"),
        format!("{base}/api/v3/repos/acme/app/../../admin"),
        format!("{base}/api/v3/repos/acme/%2e%2e/admin"),
        format!("{base}/api/v3/repos/acme/%2E%2E/admin"),
        format!("{base}/api/v3/repos/acme/app/contents/..%2F..%2Fadmin"),
        format!("{base}/api/v3/repos/acme/app/contents/.%2e/x"),
        format!("{base}/api/v3/repos//app"),
        format!("{base}/api/v3/repos/acme/./app"),
        format!("{base}/download/..%2f..%2fetc"),
        format!("{base}/api/v3/repos/acme/app/contents/a%5C..%5Cb"),
    ] {
        let r = env.proxy("GET", &target, &[]);
        assert_eq!(r.status, 400, "{target}: {r:?}");
        assert_eq!(
            r.header("x-semgrep-private-link-error"),
            Some("1"),
            "{target}: {}",
            r.head
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{target}: {}",
            r.head
        );
    }
    let leaked = &env.upstream_seen()[before..];
    assert!(
        leaked.is_empty(),
        "malformed requests reached the upstream: {leaked:#?}"
    );
}

fn download_is_byte_exact(env: &Env) {
    let base = format!("http://127.0.0.1:{HTTP_PORT}");
    // 10 MiB download, byte-exact (curl writes it to a file, which the helper reads).
    let n: u64 = 10 << 20;
    let r = env.proxy("GET", &format!("{base}/download/{n}"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-semgrep-private-link"), Some("1"));
    assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));
    let got = &r.body;
    assert_eq!(got.len() as u64, n, "download length");
    if let Some(i) = got
        .iter()
        .enumerate()
        .position(|(i, &b)| b != pattern(i as u64))
    {
        panic!(
            "download differs at byte {i}: got {:#04x}, want {:#04x}",
            got[i],
            pattern(i as u64)
        );
    }
    let mib = n as f64 / f64::from(1u32 << 20);
    eprintln!(
        "interop_proxy: 10 MiB download: wall {:.3}s ({:.1} MB/s, {:.1} MiB/s); curl time_total \
         {:.3}s ({:.1} MB/s)",
        r.wall.as_secs_f64(),
        n as f64 / 1e6 / r.wall.as_secs_f64(),
        mib / r.wall.as_secs_f64(),
        r.time_total,
        n as f64 / 1e6 / r.time_total.max(1e-9),
    );
}

fn uploads_arrive_intact(env: &Env) {
    let base = format!("http://127.0.0.1:{HTTP_PORT}");
    // 5 MiB upload, chunked and with Content-Length: the upstream hashes what it received.
    let upload = env.dir.path().join("upload.bin");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..(5usize << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&upload, &data).expect("write upload");
    let want = format!(
        r#"{{"bytes":{},"sha256":"{}"}}"#,
        data.len(),
        sha256_file(&upload)
    );
    let upload_arg = format!("@{}", path_str(&upload));
    for (label, extra) in [
        (
            "chunked",
            vec![
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &upload_arg,
            ],
        ),
        ("content-length", vec!["--data-binary", &upload_arg]),
    ] {
        let before = env.upstream_seen().len();
        let r = env.proxy("POST", &format!("{base}/upload"), &extra);
        assert_eq!(r.status, 200, "{label}: {r:?}");
        assert_eq!(r.text(), want, "{label} upload");
        let seen = env.upstream_seen();
        assert_eq!(seen.len(), before + 1, "{label}: {seen:?}");
        assert!(seen[before].contains(&field("method", "POST")));
        eprintln!(
            "interop_proxy: 5 MiB {label} upload: wall {:.3}s; upstream saw {}",
            r.wall.as_secs_f64(),
            seen[before]
        );
    }
}

fn tls_upstream_is_verified_against_the_configured_ca(env: &Env) {
    // TLS upstream, verified against the test CA from [upstream] ca_files; the rule's
    // header is injected.
    let before = env.upstream_seen().len();
    let r = env.proxy(
        "GET",
        &format!("https://localhost:{TLS_PORT}/api/v3/repos/acme/app"),
        &[],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", env.diagnostics());
    assert_eq!(r.header("x-semgrep-private-link"), Some("1"));
    assert!(r.text().contains(r#""scheme":"https""#), "{}", r.text());
    let seen = env.upstream_seen();
    assert_eq!(seen.len(), before + 1);
    for want in [
        field("scheme", "https"),
        field("path", "/api/v3/repos/acme/app"),
        hdr("authorization", &format!("Bearer {TOKEN}")),
        hdr("host", &format!("localhost:{TLS_PORT}")),
    ] {
        assert!(
            seen[before].contains(&want),
            "upstream saw {}, wanted {want}",
            seen[before]
        );
    }
}

fn dead_upstream_is_502_slow_upstream_is_504(env: &Env) {
    let base = format!("http://127.0.0.1:{HTTP_PORT}");
    let repo = format!("{base}/api/v3/repos/acme/app");
    // Dead upstream: 502. Slow upstream (response_timeout 2s): 504, in about 2 s (well
    // before the upstream's own answer at 5 s).
    let r = env.proxy("GET", &format!("http://127.0.0.1:{DEAD_PORT}/x"), &[]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-semgrep-private-link-error"), Some("1"));
    let r = env.proxy("GET", &format!("{base}/slow/5"), &[]);
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.header("x-semgrep-private-link-error"), Some("1"));
    assert!(
        r.wall >= Duration::from_millis(1900) && r.wall < Duration::from_millis(4900),
        "504 after {:?}",
        r.wall
    );
    eprintln!("interop_proxy: 504 after {:?}", r.wall);
    // The broker keeps serving.
    let r = env.proxy("GET", &repo, &[]);
    assert_eq!(r.status, 200, "{r:?}");
}

/// SIGTERM after `env` served traffic (token injected, a 502 and a 504): exit status 0; the
/// captured output never shows the token, plain or base64.
fn sigterm_exits_0_and_the_output_never_shows_the_token(mut env: Env) {
    let started = Instant::now();
    sh(&["kill", "-TERM", &env.broker.id().to_string()]);
    let child = env.broker.0.as_mut().expect("broker");
    let status = poll_for(
        Duration::from_secs(10),
        "the broker to exit after SIGTERM",
        || child.try_wait().expect("wait").ok_or_else(String::new),
    );
    env.broker.0 = None;
    eprintln!(
        "interop_proxy: broker stopped {:?} after SIGTERM",
        started.elapsed()
    );
    let output = env.broker_output();
    assert!(status.success(), "broker exit status {status:?}\n{output}");
    assert!(!output.is_empty(), "the broker logged nothing at info");
    assert!(
        !output.contains(TOKEN),
        "the token appears in the broker's output:\n{output}"
    );
    for core in base64_cores(TOKEN) {
        assert!(
            !output.contains(&core),
            "base64 of the token ({core}) appears in the broker's output:\n{output}"
        );
    }
    // 502 and 504 each left a structured log line.
    let plain = strip_ansi(&output);
    for status in ["502", "504"] {
        assert!(
            plain
                .lines()
                .any(|l| l.contains(r#"event="upstream.error""#)
                    && l.contains(&format!("status={status}"))),
            "no upstream.error line for {status}:\n{plain}"
        );
    }
    eprintln!(
        "interop_proxy: broker output {} bytes, {} lines; upstream saw {} requests",
        output.len(),
        output.lines().count(),
        env.upstream_seen().len()
    );
}

#[test]
fn the_upstream_is_private_and_an_allowed_get_carries_the_injected_token() {
    allowed_get_carries_the_injected_token(&Env::start());
}

#[test]
fn denied_and_malformed_requests_never_reach_the_upstream() {
    denied_and_malformed_requests_stop_at_the_broker(&Env::start());
}

#[test]
fn a_10_mib_download_through_wireguard_go_is_byte_exact() {
    download_is_byte_exact(&Env::start());
}

#[test]
fn chunked_and_sized_uploads_arrive_intact() {
    uploads_arrive_intact(&Env::start());
}

#[test]
fn a_tls_upstream_is_verified_against_the_configured_ca() {
    tls_upstream_is_verified_against_the_configured_ca(&Env::start());
}

#[test]
fn dead_upstream_is_502_slow_upstream_is_504_and_the_broker_keeps_serving() {
    dead_upstream_is_502_slow_upstream_is_504(&Env::start());
}

#[test]
fn sigterm_after_traffic_exits_0_and_never_logs_the_token() {
    let env = Env::start();
    allowed_get_carries_the_injected_token(&env);
    tls_upstream_is_verified_against_the_configured_ca(&env);
    dead_upstream_is_502_slow_upstream_is_504(&env);
    sigterm_exits_0_and_the_output_never_shows_the_token(env);
}

//! `wgbroker loadtest` on the real binary: in-process scenarios, the open loop's rate, the
//! calibration responder, gateway mode against a separately started `wgbroker run`, and the
//! exit codes of bad invocations. No assertion on performance figures.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use wgbroker::keys::PrivateKey;
use wgbroker::testkit::scm::MockScm;
use wgbroker::testkit::toml::{PeerToml, WireguardToml};

use crate::harness::{poll_for, spread_args};

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .arg("loadtest")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wgbroker loadtest")
}

fn json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn u(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

fn f(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// The common figures of a clean run.
fn assert_clean(r: &Value) -> u64 {
    let n = u(r, "requests");
    assert!(n > 0, "no request finished: {r}");
    assert_eq!(u(r, "errors_total"), 0, "errors: {}", r["errors"]);
    assert_eq!(u(r, "ok"), n);
    assert!(u(r, "latency_us.samples") == n && u(r, "latency_us.p50") > 0);
    assert!(u(r, "latency_us.p50") <= u(r, "latency_us.p99"));
    assert!(u(r, "latency_us.p99") <= u(r, "latency_us.max"));
    assert!(f(r, "cpu_s.driver") > 0.0, "driver CPU: {}", r["cpu_s"]);
    // The in-process broker reports what it dropped inside (nothing, in a clean run).
    if r["target"] == "in-process" {
        for k in ["link", "tunnel", "oversize", "send_errors"] {
            assert_eq!(
                u(r, &format!("broker_drops.{k}")),
                0,
                "{}",
                r["broker_drops"]
            );
        }
    } else {
        assert!(r["broker_drops"].is_null(), "{}", r["broker_drops"]);
    }
    n
}

#[test]
fn in_process_small_denied_and_download() {
    let small = json(&loadtest(&[
        "--json",
        "--duration",
        "2s",
        "--connections",
        "4",
    ]));
    let n = assert_clean(&small);
    assert_eq!(small["target"], "in-process");
    assert_eq!(small["loop"], "closed");
    assert_eq!(u(&small, "statuses.200"), n);
    assert!(
        f(&small, "cpu_s.broker") > 0.0,
        "broker CPU: {}",
        small["cpu_s"]
    );
    assert!(f(&small, "req_per_s") > 0.0 && f(&small, "mb_per_s.received") > 0.0);

    let denied = json(&loadtest(&["--json", "--duration", "2s", "-s", "denied"]));
    let n = assert_clean(&denied);
    assert_eq!(u(&denied, "statuses.403"), n, "every request is denied");
    assert_eq!(u(&denied, "status_classes.4xx"), n);

    let size = 256 * 1024;
    let download = json(&loadtest(&[
        "--json",
        "--duration",
        "2s",
        "-s",
        "download",
        "--size",
        "256KiB",
        "--connections",
        "2",
    ]));
    let n = assert_clean(&download);
    assert_eq!(
        u(&download, "bytes.body_received"),
        n * size,
        "every body complete"
    );
    assert!(u(&download, "bytes.received") > n * size);
}

/// The WAN options: every request pays the added round trip, the report names the impairment
/// and counts what each direction dropped, and one seed drops the same share again.
#[test]
fn an_impaired_path_delays_and_drops_and_says_so() {
    let delayed = json(&loadtest(&[
        "--json",
        "--requests",
        "40",
        "--duration",
        "60s",
        "--connections",
        "2",
        "--delay",
        "20ms",
    ]));
    let n = assert_clean(&delayed);
    assert_eq!(n, 40);
    // Request one way, response the other: no response can come sooner than 2 x 20 ms.
    assert!(
        u(&delayed, "latency_us.min") >= 40_000,
        "min latency {} us with 20 ms each way",
        u(&delayed, "latency_us.min")
    );
    let w = &delayed["wan"];
    assert_eq!(f(w, "delay_ms"), 20.0);
    assert!(
        w["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("delay 20ms, loss 0%"))
    );
    for dir in ["to_broker", "from_broker"] {
        assert!(u(w, &format!("{dir}.offered")) > 0, "{w}");
        assert_eq!(u(w, &format!("{dir}.lost")), 0, "{w}");
    }

    // 5 % loss each way: TCP retransmits (slowly, today), every request still completes, and
    // the drops are counted per direction.
    let lossy = |seed: &str| {
        json(&loadtest(&[
            "--json",
            "--requests",
            "30",
            "--duration",
            "120s",
            "--timeout",
            "60s",
            "--connections",
            "4",
            "-s",
            "download",
            "--size",
            "64KiB",
            "--loss",
            "5%",
            "--seed",
            seed,
        ]))
    };
    let r = lossy("12345");
    assert_clean(&r);
    let w = &r["wan"];
    assert_eq!(u(w, "seed"), 12345);
    assert_eq!(f(w, "loss"), 0.05);
    let lost = u(w, "from_broker.lost") + u(w, "to_broker.lost");
    let offered = u(w, "from_broker.offered") + u(w, "to_broker.offered");
    assert!(lost > 0, "{w}");
    // Binomial around 5 %: far from 0 and from 10 % for the few thousand datagrams here.
    let share = lost as f64 / offered as f64;
    assert!(
        (0.02..0.09).contains(&share),
        "lost {lost} of {offered}: {w}"
    );
    assert_eq!(u(w, "from_broker.overflow") + u(w, "to_broker.overflow"), 0);
}

#[test]
fn upload_mix_and_connect_run_clean() {
    // Bounded by count, so a slow machine only makes the test slower, never empty.
    let up = json(&loadtest(&[
        "--json",
        "--requests",
        "12",
        "--duration",
        "60s",
        "-s",
        "upload",
        "--size",
        "100KB",
    ]));
    let n = assert_clean(&up);
    assert_eq!(u(&up, "bytes.body_sent"), n * 100_000);
    let mix = json(&loadtest(&[
        "--json",
        "--requests",
        "400",
        "--duration",
        "60s",
        "-s",
        "mix",
    ]));
    assert_clean(&mix);
    let kinds = mix["kinds"].as_array().expect("kinds");
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    assert!(u(&mix, "statuses.403") > 0 && u(&mix, "statuses.200") > 0);
    let conn = json(&loadtest(&[
        "--json",
        "--requests",
        "40",
        "--duration",
        "60s",
        "-s",
        "connect",
        "--connections",
        "4",
    ]));
    let n = assert_clean(&conn);
    assert!(
        u(&conn, "connections_opened") >= n,
        "a connection per request"
    );
}

#[test]
fn open_loop_reaches_the_asked_rate() {
    let r = json(&loadtest(&[
        "--json",
        "--rate",
        "200",
        "--duration",
        "3s",
        "--connections",
        "8",
        "--warmup",
        "500ms",
        "-s",
        "healthcheck",
    ]));
    assert_clean(&r);
    assert_eq!(r["loop"], "open");
    let rate = f(&r, "req_per_s");
    assert!(
        (170.0..=230.0).contains(&rate),
        "asked 200 req/s, got {rate}"
    );
    assert!(
        u(&r, "warmup_requests") > 0,
        "warm-up requests are kept apart"
    );
}

#[test]
fn requests_bound_and_calibration() {
    let r = json(&loadtest(&[
        "--json",
        "--requests",
        "300",
        "--duration",
        "20s",
        "--connections",
        "3",
    ]));
    assert_eq!(assert_clean(&r), 300);
    assert!(f(&r, "duration_s") < 20.0, "ended at the request count");

    let c = json(&loadtest(&[
        "--json",
        "--calibrate",
        "--requests",
        "200",
        "--duration",
        "60s",
        "-s",
        "denied",
    ]));
    assert_eq!(c["broker"]["target"], "in-process");
    assert_eq!(c["calibration"]["target"], "null");
    assert_clean(&c["broker"]);
    assert_clean(&c["calibration"]);
    assert!(f(&c["calibration"], "cpu_s.responder") > 0.0);
    assert_eq!(f(&c["calibration"], "cpu_s.broker"), 0.0);
}

#[test]
fn bad_invocations_exit_64_and_bad_configs_78() {
    for args in [
        &["--connections", "0"][..],
        &["--duration", "2h"],
        &["--rate", "-5"],
        &["--gateway"],
        &["--gateway", "--broker-public-key", "x", "-s", "download"],
        &["-s", "nonsense"],
        &["--size", "12 parsecs"],
        &["-s", "small", "--mix", "api.repo=1"],
        &["-H", "no colon"],
        &["--loss", "0.01"],
        &["--loss", "150%"],
        &["--delay", "11s"],
        &["--seed", "5"],
    ] {
        let o = loadtest(args);
        assert_eq!(
            o.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[inbound]\nlisten_port = \"eighty\"\nnot_a_key = 1\n").expect("write");
    let o = loadtest(&["-c", bad.to_str().expect("utf8"), "--duration", "1s"]);
    assert_eq!(
        o.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not_a_key"));
}

/// A gateway key file that cannot be read exits 66, one without a key 65: the load test's typed
/// errors keep the statuses `wgbroker` gave them before they were typed.
#[test]
fn an_unreadable_key_file_exits_66_and_a_bad_one_65() {
    let broker = PrivateKey::generate()
        .expect("rng")
        .public_key()
        .to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key\n").expect("write");
    let missing = dir.path().join("missing.key");
    for (file, status) in [(&missing, 66), (&bad, 65)] {
        let o = loadtest(&[
            "--gateway",
            "--broker-public-key",
            &broker,
            "-s",
            "healthcheck",
            "--private-key-file",
            file.to_str().expect("utf8"),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(status), "{err}");
        assert!(
            err.starts_with("wgbroker loadtest: ") && err.contains(file.to_str().expect("utf8")),
            "{err}"
        );
    }
}

/// Kills a child process this test started, on every path.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn gateway_mode_drives_an_external_broker() {
    let scm = MockScm::start("ghp_gatewaymodeTOKEN0123456789").expect("mock scm");
    let broker_key = PrivateKey::generate().expect("rng");
    let mut lt = Reaper(
        Command::new(env!("CARGO_BIN_EXE_wgbroker"))
            .args([
                "loadtest",
                "--gateway",
                "--json",
                "--broker-public-key",
                &broker_key.public_key().to_string(),
                "--upstream",
                &format!("http://{}", scm.addr()),
                "--duration",
                "2s",
                "--connections",
                "4",
                "--handshake-timeout",
                "30s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn loadtest"),
    );
    // The snippet on stderr (stdout is the JSON): the gateway's key and endpoint.
    let stderr = lt.0.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let (mut key, mut endpoint, mut allowed) = (None, None, None);
    let value = |l: &str| l.split('"').nth(1).map(str::to_owned);
    for line in lines.by_ref() {
        let line = line.expect("read stderr");
        if line.starts_with("public_key = ") {
            key = value(&line);
        } else if line.starts_with("endpoint = ") {
            endpoint = value(&line);
        } else if line.starts_with("allowed_ips = ") {
            allowed = value(&line);
        } else if line.starts_with("# --- end") {
            break;
        }
    }
    let (key, endpoint, allowed) = (
        key.expect("public_key line"),
        endpoint.expect("endpoint line"),
        allowed.expect("allowed_ips line"),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("broker.toml");
    let wireguard = WireguardToml::new(&broker_key, "10.77.0.2")
        .peer(PeerToml::new(key, endpoint, allowed).persistent_keepalive(0))
        .render();
    std::fs::write(
        &cfg,
        format!(
            r#"
{wireguard}
[[scm]]
type = "github"
base_url = "http://{}/api/v3"
token = "ghp_gatewaymodeTOKEN0123456789"

[admin]
listen = "127.0.0.1:0"

[log]
level = "error"
"#,
            scm.addr()
        ),
    )
    .expect("write config");
    let _broker = Reaper(
        Command::new(env!("CARGO_BIN_EXE_wgbroker"))
            .args(["run", "-c", cfg.to_str().expect("utf8")])
            .args(spread_args(&cfg))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn broker"),
    );
    // Drain the rest of stderr so the child never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    poll_for(Duration::from_secs(60), "loadtest to finish", || {
        lt.0.try_wait().expect("wait").ok_or_else(String::new)
    });
    let status = lt.0.wait().expect("status");
    let mut out = String::new();
    lt.0.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    let rest = drain.join().unwrap_or_default();
    assert!(
        status.success(),
        "exit {status:?}: {out}\n{}",
        rest.join("\n")
    );
    let r: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(r["target"], "gateway");
    let n = assert_clean(&r);
    assert_eq!(
        f(&r, "cpu_s.broker"),
        0.0,
        "an external broker's CPU is not ours"
    );
    // The requests really went through the broker, with its token injected.
    let seen = scm.seen();
    assert!(
        seen.len() as u64 >= n,
        "{} upstream requests for {n}",
        seen.len()
    );
    assert!(
        seen.iter()
            .all(|s| s.header("authorization") == Some("Bearer ghp_gatewaymodeTOKEN0123456789"))
    );
}

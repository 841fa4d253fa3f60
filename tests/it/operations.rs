//! Operating the real binary: SIGHUP reloads (valid and invalid files) and SIGTERM drains while
//! requests are in flight. The vendor side is the test kit's gateway on loopback; the broker is
//! `wgbroker run`, dialing it.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use wgbroker::keys::PrivateKey;
use wgbroker::testkit::client::{self, Request, RunOptions};
use wgbroker::testkit::gateway::{Gateway, GatewayConfig};
use wgbroker::testkit::scm::MockScm;
use wgbroker::testkit::toml::{PeerToml, WireguardToml};

use crate::harness::{poll_until, spread_args};

fn config(
    broker: &PrivateKey,
    vendor: &PrivateKey,
    gateway: std::net::SocketAddr,
    scm: std::net::SocketAddr,
    extra_rule: &str,
) -> String {
    let wireguard = WireguardToml::new(broker, "10.77.0.2")
        .peer(PeerToml::new(vendor.public_key(), gateway, "10.77.0.1/32").persistent_keepalive(0))
        .render();
    format!(
        r#"
{wireguard}[admin]
listen = "127.0.0.1:0"
[log]
level = "info"
format = "json"
[[allow]]
url = "http://{scm}/slow/:s"
methods = ["GET"]
{extra_rule}
"#
    )
}

fn kill(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
}

/// `wgbroker run` on a config file dialing a fresh test-kit gateway, with the handshake done.
struct Running {
    scm: MockScm,
    broker_key: PrivateKey,
    vendor_key: PrivateKey,
    gw: Gateway,
    /// Holds the config file and the log; removed on drop.
    dir: tempfile::TempDir,
    file: std::path::PathBuf,
    log_path: std::path::PathBuf,
    /// The config first written to `file`.
    base: String,
    child: std::process::Child,
}

/// `extra` is appended to the generated config (rules, or a `[runtime]` table).
fn start_broker(extra: &str) -> Running {
    let scm = MockScm::start("unused").expect("mock");
    let broker_key = PrivateKey::generate().expect("rng");
    let vendor_key = PrivateKey::generate().expect("rng");
    let vip: IpAddr = [10, 77, 0, 1].into();
    let bip: IpAddr = [10, 77, 0, 2].into();
    let mut gw = Gateway::bind(&GatewayConfig::new(
        vendor_key.clone(),
        broker_key.public_key(),
        vip,
        bip,
    ))
    .expect("gateway");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broker.toml");
    let base = config(
        &broker_key,
        &vendor_key,
        gw.local_addr().expect("addr"),
        scm.addr(),
        extra,
    );
    std::fs::write(&file, &base).expect("write");
    let log_path = dir.path().join("broker.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .args(["run", "-c"])
        .arg(&file)
        .args(spread_args(&file))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn broker");
    assert!(gw.wait_handshake(Duration::from_secs(20)), "no handshake");
    Running {
        scm,
        broker_key,
        vendor_key,
        gw,
        dir,
        file,
        log_path,
        base,
        child,
    }
}

#[test]
fn sighup_reloads_and_sigterm_drains_without_failing_requests() {
    let Running {
        scm,
        broker_key,
        vendor_key,
        mut gw,
        dir,
        file,
        log_path,
        base: _,
        mut child,
    } = start_broker("");
    let pid = child.id();
    // Signals are sent while slow requests are known to be at the SCM (each takes 1 s there).
    let seen = scm.seen_handle();
    let slow_seen = move || seen.count(|s| s.target.starts_with("/slow/"));
    let gw_addr = gw.local_addr().expect("addr");

    // 8 connections x 3 requests of 1 s each, while the files change under the broker.
    let file2 = file.clone();
    let allowed_extra = format!(
        "[[allow]]\nurl = \"http://{}/download/:n\"\nmethods = [\"GET\"]\n",
        scm.addr()
    );
    let valid = config(
        &broker_key,
        &vendor_key,
        gw_addr,
        scm.addr(),
        &allowed_extra,
    );
    let in_flight = slow_seen.clone();
    let signaller = std::thread::spawn(move || {
        poll_until(Duration::from_secs(10), "the first 8 slow requests", || {
            in_flight() >= 8
        });
        std::fs::write(&file2, valid).expect("write valid");
        kill(pid, "-HUP");
        // The invalid file replaces the valid one only after the broker applied that one, and
        // while the second round of requests is in flight.
        poll_until(Duration::from_secs(10), "the valid reload applied", || {
            std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("\"result\":\"applied\""))
        });
        poll_until(Duration::from_secs(10), "16 slow requests", || {
            in_flight() >= 16
        });
        std::fs::write(&file2, "[wireguard\nbroken = ").expect("write invalid");
        kill(pid, "-HUP");
    });
    let slow = format!("/proxy/http://{}/slow/1", scm.addr());
    let plan = (0..8)
        .map(|_| (0..3).map(|_| Request::get(&slow)).collect())
        .collect();
    let res = client::run(
        &mut gw,
        plan,
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(30),
            keep_bodies: true,
        },
    );
    signaller.join().expect("signals sent");
    for conn in &res {
        for ex in conn {
            let r = ex
                .response
                .as_ref()
                .unwrap_or_else(|e| panic!("request failed across reload: {e}"));
            assert_eq!(r.status, 200);
        }
    }
    // The valid reload applied (its new rule allows), the invalid one was refused.
    let dl = format!("/proxy/http://{}/download/16", scm.addr());
    let res = client::run(
        &mut gw,
        vec![vec![Request::get(&dl)]],
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(10),
            keep_bodies: true,
        },
    );
    assert_eq!(
        res[0][0].response.as_ref().expect("response").status,
        200,
        "the reloaded rule allows"
    );

    // SIGTERM with requests in flight: they finish, the broker exits 0.
    let before = slow_seen();
    let killer = std::thread::spawn(move || {
        poll_until(Duration::from_secs(10), "4 more slow requests", || {
            slow_seen() >= before + 4
        });
        kill(pid, "-TERM");
    });
    let plan = (0..4).map(|_| vec![Request::get(&slow)]).collect();
    let res = client::run(
        &mut gw,
        plan,
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(15),
            keep_bodies: true,
        },
    );
    killer.join().expect("signal sent");
    for conn in &res {
        let r = conn[0]
            .response
            .as_ref()
            .unwrap_or_else(|e| panic!("in-flight request failed during drain: {e}"));
        assert_eq!(r.status, 200);
    }
    // Keep the tunnel moving while the broker closes its connections.
    let mut status = None;
    for _ in 0..500 {
        if let Some(s) = child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        gw.pump(Duration::from_millis(20)).expect("pump");
    }
    let status = status.expect("the broker exited within 10 s");
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("broker.log")).expect("log");
    assert!(
        log.contains("\"result\":\"applied\""),
        "valid reload applied:\n{log}"
    );
    assert!(
        log.contains("invalid, keeping the running configuration"),
        "invalid reload refused:\n{log}"
    );
    assert!(log.contains("\"event\":\"shard.drain\""), "drained:\n{log}");
}

/// The `config.reload` lines of the broker's JSON log, in order: for each applied reload, the
/// sections it said need a restart ("" for none).
fn reload_outcomes(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains("\"event\":\"config.reload\""))
    {
        if line.contains("\"result\":\"applied\"") {
            out.push(String::new());
        } else if let Some(rest) = line.split("\"needs_restart\":\"").nth(1) {
            if let (Some(last), Some(sections)) = (out.last_mut(), rest.split('"').next()) {
                *last = sections.to_owned();
            }
        }
    }
    out
}

#[test]
fn every_reload_names_the_sections_still_waiting_for_a_restart() {
    // `_dir` and `_scm` keep the files and the upstream alive (a `..` would drop them here).
    let Running {
        mut gw,
        file,
        log_path,
        base,
        mut child,
        dir: _dir,
        scm: _scm,
        ..
    } = start_broker("");
    let pid = child.id();

    let changed = format!("{base}\n[runtime]\nchannel_capacity = 512\n");
    // A runtime change, the same file again, then the original file back.
    let steps = [&changed, &changed, &base];
    for (i, text) in steps.iter().enumerate() {
        std::fs::write(&file, text).expect("write");
        kill(pid, "-HUP");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while reload_outcomes(&std::fs::read_to_string(&log_path).expect("log")).len() <= i {
            assert!(
                std::time::Instant::now() < deadline,
                "reload {i} not logged"
            );
            gw.pump(Duration::from_millis(20)).expect("pump");
        }
    }
    kill(pid, "-TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert_eq!(
        reload_outcomes(&log),
        ["runtime", "runtime", ""],
        "the change is pending until a restart, however many reloads come after it; with the \
         original file back nothing is:\n{log}"
    );
}

#[test]
fn an_invalid_reload_logs_the_place_of_a_syntax_error_never_the_secret() {
    let Running {
        mut gw,
        file,
        log_path,
        base,
        mut child,
        dir: _dir,
        scm: _scm,
        ..
    } = start_broker("");
    let pid = child.id();
    let broken = format!(
        "{base}[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://gitlab.example.com/api/v4\"\n\
         token = \"glpat-RELOADSECRET42\" oops\n"
    );
    // Where the error is: the line of the token, the column of the junk after it (1-based).
    let (line, text) = broken
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("RELOADSECRET42"))
        .expect("token line");
    let column = text.find("oops").expect("junk") + 1;
    std::fs::write(&file, &broken).expect("write");
    kill(pid, "-HUP");
    let refused = |log: &str| {
        log.lines()
            .find(|l| l.contains("invalid, keeping the running configuration"))
            .map(str::to_owned)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line_logged = loop {
        let log = std::fs::read_to_string(&log_path).expect("log");
        if let Some(l) = refused(&log) {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "invalid reload not logged:\n{log}"
        );
        gw.pump(Duration::from_millis(20)).expect("pump");
    };
    kill(pid, "-TERM");
    assert!(child.wait().expect("exit").success());
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        !log.contains("RELOADSECRET42"),
        "the token is logged:\n{log}"
    );
    let want = format!("{}:{}:{column}: scm[0].token: ", file.display(), line + 1);
    assert!(line_logged.contains(&want), "{want:?} in {line_logged}");
}

#[test]
fn a_udp_buffer_the_kernel_caps_is_logged_with_the_fix() {
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .expect("net.core.rmem_max")
        .trim()
        .parse()
        .expect("a number");
    let mut b = start_broker(&format!("[runtime]\nudp_recv_buffer = {}\n", rmem_max * 2));
    kill(b.child.id(), "-TERM");
    assert!(b.child.wait().expect("exit").success());
    let log = std::fs::read_to_string(&b.log_path).expect("log");
    let line = log
        .lines()
        .find(|l| l.contains("\"runtime.udp_buffer\""))
        .unwrap_or_else(|| panic!("no runtime.udp_buffer warning in:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(v["level"], "WARN", "{line}");
    assert_eq!(v["key"], "udp_recv_buffer", "{line}");
    assert_eq!(v["requested"], rmem_max * 2, "{line}");
    assert_eq!(v["granted"], rmem_max, "{line}");
    let msg = v["message"].as_str().expect("message");
    assert!(msg.contains("sysctl -w net.core.rmem_max="), "{msg}");
}

#[test]
fn a_reload_switches_the_log_format_without_a_restart() {
    let Running {
        mut gw,
        file,
        log_path,
        base,
        mut child,
        dir: _dir,
        scm: _scm,
        ..
    } = start_broker("");
    let pid = child.id();
    let log = || std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log().lines().all(|l| l.starts_with('{')),
        "JSON at start:\n{}",
        log()
    );
    std::fs::write(
        &file,
        base.replace("format = \"json\"", "format = \"text\""),
    )
    .expect("write");
    kill(pid, "-HUP");
    let text_reload = |log: &str| {
        log.lines()
            .find(|l| !l.starts_with('{') && l.contains("config.reload"))
            .map(str::to_owned)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = text_reload(&log()) {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no text reload line:\n{}",
            log()
        );
        gw.pump(Duration::from_millis(20)).expect("pump");
    };
    assert!(line.contains("applied"), "{line}");
    kill(pid, "-TERM");
    assert!(child.wait().expect("exit").success());
    let all = log();
    let first_text = all.lines().position(|l| !l.starts_with('{')).expect("text");
    assert!(first_text > 0, "JSON before the reload:\n{all}");
    assert!(
        all.lines().skip(first_text).all(|l| !l.starts_with('{')),
        "text from the reload on:\n{all}"
    );
    assert!(
        !all.contains("needs_restart"),
        "nothing waits for a restart:\n{all}"
    );
}

//! `wgbroker init --non-interactive` then `wgbroker test` against the interop set-up: a
//! `wireguard-go` gateway with an nginx heartbeat in the vendor's namespace, the broker's
//! commands in the other, an nginx standing in for the SCM on the broker's loopback. And the
//! blocked-UDP case named as such. Needs root, `ip netns`, `wireguard-go`, `nginx`.

use std::path::Path;
use std::process::Output;

use wgbroker::keys::PrivateKey;

use crate::harness::netns::Pair;

/// An nginx config in `dir` listening on `listen`, answering `answer` to everything.
fn nginx_conf(dir: &Path, name: &str, listen: &str, answer: &str) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    let d = d.display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  \
         fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  \
         server {{\n    listen {listen};\n    location / {{ return {answer}; }}\n  }}\n}}\n"
    );
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf).expect("write nginx.conf");
    path.display().to_string()
}

fn wgbroker(pair: &Pair, ns: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut full = vec![env!("CARGO_BIN_EXE_wgbroker")];
    full.extend_from_slice(args);
    let mut c = pair.command(ns, &full);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run wgbroker")
}

/// Waits until something in `ns` accepts TCP on `addr` (nginx starting).
fn wait_listening(pair: &Pair, ns: &str, url: &str) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ok = pair
            .command(
                ns,
                &["curl", "-s", "-o", "/dev/null", "--max-time", "1", url],
            )
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "nothing answers {url} in {ns}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn init_non_interactive_then_test_pass_against_wireguard_go() {
    let mut pair = Pair::new("ob");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("etc/broker.toml");
    let cfg_s = cfg.to_str().expect("utf-8");
    let vendor_key = PrivateKey::generate().expect("rng");
    let vendor_pub = vendor_key.public_key().to_string();
    let endpoint = format!("{}:51820", pair.vendor_ip);
    let broker_ns = pair.broker.clone();
    let vendor_ns = pair.vendor.clone();

    // The operator's step 1: init, before the vendor knows the broker.
    let out = wgbroker(
        &pair,
        &broker_ns,
        &[
            "init",
            "--non-interactive",
            "--gateway-public-key",
            &vendor_pub,
            "--endpoint",
            &endpoint,
            "--address",
            "10.77.0.2",
            "--allowed-ips",
            "10.77.0.1/32",
            "--heartbeat-url",
            "http://10.77.0.1/ping",
            "--scm",
            "github=http://127.0.0.1:18088/api/v3,token=env:OB_GH_TOKEN",
            "--config",
            cfg_s,
            "--no-test",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "init: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker_pub = stdout
        .lines()
        .find_map(|l| l.strip_prefix("broker public key (give it to the vendor): "))
        .expect("init prints the public key")
        .to_owned();

    // Step 2: the vendor configures the broker's key; its gateway serves a heartbeat.
    let ifname = format!("wgo{}", std::process::id() % 100_000);
    pair.start_wireguard_go_on(
        &ifname,
        &vendor_key.to_base64(),
        "10.77.0.1",
        &broker_pub,
        "10.77.0.2",
    );
    let hb = nginx_conf(dir.path(), "vendor", "10.77.0.1:80", "200 ok");
    pair.spawn(&vendor_ns, &["nginx", "-c", &hb, "-g", "daemon off;"]);
    wait_listening(&pair, &vendor_ns, "http://10.77.0.1/ping");
    let scm = nginx_conf(dir.path(), "scm", "127.0.0.1:18088", "200 '{}'");
    pair.spawn(&broker_ns, &["nginx", "-c", &scm, "-g", "daemon off;"]);
    wait_listening(&pair, &broker_ns, "http://127.0.0.1:18088/api/v3");

    // Step 3: test passes, every check named.
    let env = [("OB_GH_TOKEN", "ghp_onboarding")];
    let out = wgbroker(&pair, &broker_ns, &["test", "-c", cfg_s, "--json"], &env);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "test failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(v["ok"], true, "{report}");
    let checks: Vec<&str> = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    for want in [
        "gateway name",
        "WireGuard handshake",
        "heartbeat",
        "SCM github",
    ] {
        assert!(
            checks.iter().any(|c| c.contains(want)),
            "{want} not in {checks:?}"
        );
    }
    assert!(
        !report.contains("ghp_onboarding"),
        "the token is never shown"
    );

    // The gateway unreachable: the table names the blocked UDP, with its fix, exit 1.
    let text = std::fs::read_to_string(&cfg).expect("config");
    let blocked = dir.path().join("blocked.toml");
    let dead = format!("{}:51999", pair.vendor_ip);
    std::fs::write(&blocked, text.replace(&endpoint, &dead)).expect("write");
    let out = wgbroker(
        &pair,
        &broker_ns,
        &["test", "-c", blocked.to_str().expect("utf-8")],
        &env,
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(
        table.contains(&format!("UDP to {dead} blocked or wrong key")),
        "{table}"
    );
    assert!(table.contains("fix: allow outbound UDP"), "{table}");
    assert!(
        table.contains("heartbeat") && table.contains("not tried: no tunnel"),
        "{table}"
    );
}

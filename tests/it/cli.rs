//! The `wgbroker` binary: key tools against `wg`, and the exit-code contract of each command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wgbroker"))
}

fn run_with_stdin(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/broker.toml")
}

/// `cmd pubkey` with `key` on standard input.
fn pubkey_via(mut cmd: Command, key: &str) -> Output {
    cmd.arg("pubkey");
    run_with_stdin(cmd, key)
}

/// `wg` from wireguard-tools; `.ci/run` installs it.
fn wg() -> Command {
    Command::new("wg")
}

#[test]
fn genkey_and_pubkey_match_wg() {
    // Our key → wg pubkey == our pubkey.
    for _ in 0..8 {
        let key = bin().arg("genkey").output().expect("genkey");
        assert!(key.status.success());
        let key = stdout(&key);
        assert_eq!(key.len(), 45, "44 base64 chars and a newline: {key:?}");
        let ours = pubkey_via(bin(), &key);
        let theirs = pubkey_via(wg(), &key);
        assert!(theirs.status.success(), "wg pubkey: {}", stderr(&theirs));
        assert_eq!(stdout(&ours), stdout(&theirs), "byte-identical output");
    }
    // wg's key → our pubkey == wg pubkey.
    for _ in 0..8 {
        let key = stdout(
            &wg()
                .arg("genkey")
                .output()
                .expect("wg genkey (wireguard-tools)"),
        );
        let ours = pubkey_via(bin(), &key);
        let theirs = pubkey_via(wg(), &key);
        assert_eq!(stdout(&ours), stdout(&theirs));
    }
}

#[test]
fn pubkey_rejects_garbage_like_wg() {
    for bad in ["", "not a key\n", "AAAA\n"] {
        let o = pubkey_via(bin(), bad);
        assert!(!o.status.success());
        assert!(stdout(&o).is_empty());
        assert!(stderr(&o).contains("not the correct length or format"));
        let w = pubkey_via(wg(), bad);
        assert!(!w.status.success(), "wg agrees that {bad:?} is bad");
    }
}

#[test]
fn version_and_usage_errors() {
    let o = bin().arg("--version").output().expect("run");
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("wgbroker {}", env!("CARGO_PKG_VERSION"))
    );
    let o = bin().arg("frobnicate").output().expect("run");
    assert_eq!(o.status.code(), Some(64));
    let o = bin().args(["explain", "GET"]).output().expect("run");
    assert_eq!(o.status.code(), Some(64), "missing -c and URL");
}

#[test]
fn check_reports_every_error_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[wireguard]\naddress = \"nope\"\nmtu = 1\n[[scm]]\ntype = \"svn\"\nbase_url = \"https://x\"\n",
    )
    .expect("write");
    let o = bin().arg("check").arg("-c").arg(&f).output().expect("run");
    assert_eq!(o.status.code(), Some(78));
    let err = stderr(&o);
    for key in [
        "wireguard.private_key",
        "wireguard.address",
        "wireguard.mtu",
        "wireguard.peers",
        "scm[0].type",
    ] {
        assert!(
            err.contains(&format!("bad.toml: {key}: ")),
            "{key} in:\n{err}"
        );
    }
}

#[test]
fn check_accepts_the_example_with_its_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = stdout(&bin().arg("genkey").output().expect("genkey"));
    std::fs::write(dir.path().join("wgbroker.key"), &key).expect("write");
    std::fs::write(dir.path().join("github.token"), "ghp_exampletoken").expect("write");
    let tok = dir.path().join("gitlab.token");
    std::fs::write(&tok, "glpat-example").expect("write");
    let over = dir.path().join("site.toml");
    std::fs::write(
        &over,
        format!(
            "[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://gitlab.example.com/api/v4\"\ntoken = {{ file = \"{}\" }}\n",
            tok.display()
        ),
    )
    .expect("write");
    let o = bin()
        .arg("check")
        .arg("-c")
        .arg(example())
        .arg("-c")
        .arg(&over)
        .env("CREDENTIALS_DIRECTORY", dir.path())
        .env("JIRA_AUTH", "Basic c2VjcmV0")
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("configuration OK"), "{out}");
    // The public key printed is the one of the credential's private key.
    let public = pubkey_via(bin(), &key);
    assert!(out.contains(stdout(&public).trim()));
    assert!(!out.contains("ghp_exampletoken") && !stderr(&o).contains("ghp_exampletoken"));
}

#[test]
fn dump_redacts_every_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("b.toml");
    std::fs::write(
        &f,
        r#"
[wireguard]
private_key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
address = "10.77.0.2"
[[wireguard.peers]]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "gw.example.com:51820"
allowed_ips = ["10.77.0.1/32"]
[[scm]]
type = "github"
base_url = "https://ghe.example.com/api/v3"
token = "ghp_inlinesecret"
[[allow]]
url = "https://jira.example.com/rest/api/2/issue/:key"
methods = ["GET"]
set_request_headers = { Authorization = "Basic amlyYTpodW50ZXIy" }
"#,
    )
    .expect("write");
    let o = bin().arg("dump").arg("-c").arg(&f).output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for secret in [
        "ghp_inlinesecret",
        "amlyYTpodW50ZXIy",
        "yAnz5TF+lXXJte14tji3zlMNq",
    ] {
        assert!(!out.contains(secret), "{secret} leaked");
    }
    // The merged document is valid TOML and lists the generated rules after the user rule.
    let doc: toml::Table = toml::from_str(&out).expect("dump is TOML");
    let rules = doc["rules"].as_array().expect("rules");
    assert!(rules.len() > 20, "GitHub rules generated");
    assert_eq!(rules[0]["origin"].as_str(), Some("allow[0]"));
    assert!(
        rules[1]["origin"]
            .as_str()
            .is_some_and(|o| o.starts_with("scm[0]"))
    );
}

#[test]
fn explain_exit_codes() {
    let ex = example();
    let run = |method: &str, url: &str| {
        let o = bin()
            .arg("explain")
            .arg("-c")
            .arg(&ex)
            .args([method, url])
            .output()
            .expect("run");
        (o.status.code(), stdout(&o))
    };
    let (code, out) = run("GET", "https://ghe.example.com/api/v3/repos/acme/app");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ALLOWED"), "{out}");
    assert!(out.contains("Authorization: <redacted>"), "{out}");
    let (code, out) = run("DELETE", "https://ghe.example.com/api/v3/repos/acme/app");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("DENIED"));
    let (code, out) = run("GET", "https://evil.example.com/");
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = run("GET", "https://ghe.example.com/api/v3/repos/acme/../admin");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.starts_with("MALFORMED"));
    let (code, _) = run("GET", "https://ghe.example.com/api/v3/repos//app");
    assert_eq!(code, Some(2));
    // User rule for Jira, from the example.
    let (code, out) = run("GET", "https://jira.example.com/rest/api/2/issue/ABC-1");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("allow[0]"), "{out}");
}

#[test]
fn demo_runs_on_loopback_and_holds_its_expectations() {
    let o = bin().arg("demo").output().expect("run demo");
    let out = stdout(&o);
    assert!(o.status.success(), "demo failed:\n{out}\n{}", stderr(&o));
    assert!(out.contains("all expectations held"), "{out}");
    for word in ["ALLOWED", "DENIED", "REJECTED"] {
        assert!(out.contains(word), "{word} missing:\n{out}");
    }
    assert!(
        !out.contains("ghp_demoTOKEN"),
        "the demo token is printed:\n{out}"
    );
}

/// A minimal valid configuration (inline keys) plus `extra`.
fn minimal_config(dir: &Path, extra: &str) -> PathBuf {
    let f = dir.join("b.toml");
    std::fs::write(
        &f,
        format!(
            r#"
[wireguard]
private_key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
address = "10.77.0.2"
[[wireguard.peers]]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "127.0.0.1:9"
allowed_ips = ["10.77.0.1/32"]
{extra}"#
        ),
    )
    .expect("write");
    f
}

/// `wgbroker <command> -c <config>` with RLIMIT_MEMLOCK lowered to 64 KiB for the child only
/// (prlimit, util-linux): below what glommio needs.
fn with_low_memlock(command: &str, config: &Path) -> Output {
    Command::new("prlimit")
        .arg("--memlock=65536:65536")
        .arg(env!("CARGO_BIN_EXE_wgbroker"))
        .args([command, "-c"])
        .arg(config)
        .output()
        .expect("prlimit (util-linux)")
}

#[test]
fn check_probes_the_host_and_names_each_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = minimal_config(dir.path(), "");
    let o = bin().arg("check").arg("-c").arg(&f).output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("host OK: io_uring available"),
        "{}",
        stdout(&o)
    );

    // A UDP buffer above net.core.rmem_max: still ready to run, with a warning naming the fix.
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .expect("net.core.rmem_max")
        .trim()
        .parse()
        .expect("a number");
    let f = minimal_config(
        dir.path(),
        &format!("[runtime]\nudp_recv_buffer = {}\n", rmem_max * 2),
    );
    let o = bin().arg("check").arg("-c").arg(&f).output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "warning: [runtime] udp_recv_buffer asks for {} bytes but net.core.rmem_max caps it at {rmem_max}",
            rmem_max * 2
        )) && err.contains("sysctl -w net.core.rmem_max="),
        "{err}"
    );

    // A locked-memory limit glommio cannot work with: the host cannot run the broker.
    let o = with_low_memlock("check", &f);
    assert_eq!(o.status.code(), Some(71), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("configuration OK"), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("wgbroker: host: ") && err.contains("LimitMEMLOCK"),
        "{err}"
    );
}

#[test]
fn run_refuses_to_start_with_a_low_memlock_limit_and_names_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = minimal_config(dir.path(), "");
    let o = with_low_memlock("run", &f);
    assert_eq!(o.status.code(), Some(71), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("ulimit -l") && err.contains("LimitMEMLOCK"),
        "{err}"
    );
}

#[test]
fn run_speaks_sd_notify_ready_watchdog_status_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let f = dir.path().join("b.toml");
    std::fs::write(
        &f,
        r#"
[wireguard]
private_key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
address = "10.77.0.2"
[[wireguard.peers]]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "127.0.0.1:9"
allowed_ips = ["10.77.0.1/32"]
[admin]
listen = "127.0.0.1:0"

[log]
level = "error"
"#,
    )
    .expect("write");
    let mut child = bin()
        .args(["run", "-c"])
        .arg(&f)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1") && seen.contains("STATUS="))
        && std::time::Instant::now() < deadline
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    assert!(seen.contains("READY=1"), "{seen}");
    assert!(
        seen.contains("WATCHDOG=1"),
        "executors progress, so the watchdog is fed: {seen}"
    );
    assert!(seen.contains("STATUS=no handshake yet"), "{seen}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    assert!(child.wait().expect("wait").success());
}

/// The highest io_uring file descriptor of a running process (its executors' rings).
fn highest_ring_fd(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("io_uring"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .max()
}

/// Waits up to `within` for `child` to exit, collecting what arrives on the notify socket.
fn wait_collecting(
    child: &mut std::process::Child,
    sock: &std::os::unix::net::UnixDatagram,
    within: std::time::Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
        if let Some(s) = child.try_wait().expect("wait") {
            while let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            return (Some(s), seen);
        }
    }
    (None, seen)
}

/// An executor that cannot be built (here: its last io_uring ring refused with EMFILE, the file
/// descriptor limit set one below what the broker needs) must fail `run` with the cause and exit
/// 71 — not be logged while systemd hears READY=1 and the broker runs without it.
#[test]
fn run_fails_with_exit_71_and_no_ready_when_an_executor_cannot_start() {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    // One executor for everything, so that the last file descriptor it opens is a ring of its
    // own (the I/O probe before it closes its rings; with the admin listener off, nothing after
    // it opens a descriptor).
    let cpu = wgbroker::runtime::placement::available_cpus()[0];
    let f = minimal_config(
        dir.path(),
        &format!("[admin]\nenabled = false\n[runtime]\ncpus = [{cpu}]\npin = false\n"),
    );
    let notify = |name: &str| {
        let path = dir.path().join(name);
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        (path, sock)
    };

    // How many descriptors a healthy start takes.
    let (path, sock) = notify("ok.sock");
    let mut child = bin()
        .args(["run", "-c"])
        .arg(&f)
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while !ready && std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            ready = String::from_utf8_lossy(&buf[..n]).contains("READY=1");
        }
    }
    assert!(ready, "a healthy start says READY=1");
    let highest = highest_ring_fd(child.id()).expect("the executor's rings");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().expect("wait").success());

    // One descriptor fewer: the executor's last ring cannot be created.
    let (path, sock) = notify("failing.sock");
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={highest}:{highest}"))
        .arg(env!("CARGO_BIN_EXE_wgbroker"))
        .args(["run", "-c"])
        .arg(&f)
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (status, seen) = wait_collecting(&mut child, &sock, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !seen.contains("READY=1"),
        "READY sent although an executor failed: {seen}\n{err}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(71), "{err}");
    assert!(
        err.contains("wgbroker: ") && err.contains("executor") && err.contains("os error 24"),
        "the cause is named: {err}"
    );
}

#[test]
fn explain_never_echoes_url_credentials() {
    for url in [
        "https://user:hunter2secret@ghe.example.com/api/v3/repos/acme/app",
        "https://user:hunter2secret@ghe.example.com/api/v3/repos/../admin",
        "https://user:hunter2secret@evil.example.com/",
    ] {
        let o = bin()
            .arg("explain")
            .arg("-c")
            .arg(example())
            .args(["GET", url])
            .output()
            .expect("run");
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(!all.contains("hunter2secret"), "{all}");
        assert!(all.contains("<redacted>@"), "{all}");
    }
}

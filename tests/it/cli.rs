//! The `wgbroker` binary: key tools against `wg`, and the exit-code contract of each command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::harness::spread_args;

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
    // The method is read as the broker reads it on the wire: case-sensitive (`get` is not
    // `GET`, so the broker answers 403), and a token (anything else, and CONNECT, is a 400).
    let (code, out) = run("get", "https://ghe.example.com/api/v3/repos/acme/app");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("DENIED  get "), "{out}");
    for bad in ["GE T", "", "G(ET", "CONNECT"] {
        let (code, out) = run(bad, "https://ghe.example.com/api/v3/repos/acme/app");
        assert_eq!(code, Some(2), "{bad:?}: {out}");
        assert!(out.starts_with("MALFORMED"), "{out}");
    }
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
        .args(spread_args(&f))
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

#[test]
fn a_toml_syntax_error_on_a_secret_line_shows_place_and_key_never_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A token with trailing junk, and a private key whose closing quote is missing.
    let a = dir.path().join("a.toml");
    std::fs::write(
        &a,
        "[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://gitlab.example.com/api/v4\"\n\
         token = \"glpat-SECRETtoken1234\" # the CI token\n[[scm]]\ntype = \"github\"\n\
         token = \"ghp_SECRETtoken5678\" x\n",
    )
    .expect("write");
    let b = dir.path().join("b.toml");
    std::fs::write(
        &b,
        "[wireguard]\naddress = \"10.77.0.2\"\n\
         private_key = \"SECRETkey/lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n",
    )
    .expect("write");
    for command in ["check", "run", "dump"] {
        let o = bin()
            .arg(command)
            .arg("-c")
            .arg(&a)
            .arg("-c")
            .arg(&b)
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(78), "{command}: {}", stderr(&o));
        let all = format!("{}{}", stdout(&o), stderr(&o));
        for secret in ["SECRETtoken1234", "SECRETtoken5678", "SECRETkey"] {
            assert!(!all.contains(secret), "{command} leaks {secret}:\n{all}");
        }
        let err = stderr(&o);
        for want in [
            format!("{}:7:31: scm[1].token: invalid TOML: ", a.display()),
            format!(
                "{}:3:62: wireguard.private_key: invalid TOML: ",
                b.display()
            ),
        ] {
            assert!(err.contains(&want), "{command}: {want:?} in:\n{err}");
        }
    }
}

#[test]
fn explain_never_echoes_a_malformed_header_argument() {
    let o = bin()
        .arg("explain")
        .arg("-c")
        .arg(example())
        .args(["GET", "https://ghe.example.com/api/v3/repos/acme/app"])
        .args(["-H", "Authorization Bearer ghp_SECRETcli"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains("ghp_SECRETcli"), "{all}");
    assert!(stderr(&o).contains("-H"), "{}", stderr(&o));
}

/// `wgbroker <args>` run to its end; `timeout` kills it after 30 s (exit 137) should it start
/// and keep running.
fn run_to_end(args: &[&str], config: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["--signal=KILL", "30", env!("CARGO_BIN_EXE_wgbroker")])
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("timeout (coreutils)")
}

#[test]
fn check_refuses_what_run_refuses_with_the_same_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").expect("write");
    let second_peer = "[[wireguard.peers]]\npublic_key = \"aTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n\
                       endpoint = \"127.0.0.1:9\"\nallowed_ips = [\"10.77.0.1/32\"]\n";
    let admin_any = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    // (configuration added, environment, what both commands say); all are exit 78.
    let cases = [
        (
            admin_any.to_owned(),
            Some(("HTTPS_PROXY", "socks5://u:SECRETpw@proxy.example:1080")),
            "HTTPS_PROXY: unsupported proxy scheme",
        ),
        (
            format!(
                "{admin_any}[upstream]\nca_files = [\"{}\"]\n",
                not_pem.display()
            ),
            None,
            "contains no PEM certificate",
        ),
        (
            format!("{second_peer}{admin_any}"),
            None,
            "allowed IP 10.77.0.1/32 is given to both peer",
        ),
        (
            format!("{admin_any}[runtime]\ncpus = [4095]\n"),
            None,
            "runtime placement",
        ),
    ];
    for (extra, env, what) in cases {
        let f = minimal_config(dir.path(), &extra);
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        for command in ["check", "run"] {
            let o = run_to_end(&[command], &f, &env);
            let err = stderr(&o);
            assert_eq!(
                o.status.code(),
                Some(78),
                "{command} with\n{extra}{env:?}:\n{err}"
            );
            assert!(
                err.contains("wgbroker: configuration: ") && err.contains(what),
                "{command}: {what:?} in:\n{err}"
            );
            assert!(!err.contains("SECRETpw"), "{err}");
        }
    }
}

#[test]
fn an_address_not_available_now_is_a_warning_for_check_and_a_temporary_failure_for_run() {
    // TEST-NET-1: an address no interface of this host has (yet).
    let dir = tempfile::tempdir().expect("tempdir");
    let f = minimal_config(dir.path(), "[admin]\nlisten = \"192.0.2.1:9000\"\n");
    let o = run_to_end(&["check"], &f, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: admin listener 192.0.2.1:9000: "),
        "{err}"
    );
    let o = run_to_end(&["run"], &f, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(75), "{err}");
    assert!(
        err.contains("wgbroker: cannot start now: admin listener 192.0.2.1:9000: "),
        "{err}"
    );
}

#[test]
fn an_address_in_use_is_a_warning_for_check_and_a_temporary_failure_for_run() {
    // As when an operator checks a changed configuration while the broker holds its ports.
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    let admin = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let (udp_port, admin_addr) = (
        udp.local_addr().expect("addr").port(),
        admin.local_addr().expect("addr"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let f = minimal_config(dir.path(), &format!("[admin]\nlisten = \"{admin_addr}\"\n"));
    let text = std::fs::read_to_string(&f).expect("read").replace(
        "address = \"10.77.0.2\"",
        &format!("address = \"10.77.0.2\"\nlisten_port = {udp_port}"),
    );
    std::fs::write(&f, text).expect("write");
    let o = run_to_end(&["check"], &f, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "warning: UDP socket [::]:{udp_port} ([wireguard] listen_port): "
        )) && err.contains(&format!("warning: admin listener {admin_addr}: "))
            && err.contains("in use"),
        "{err}"
    );
    let o = run_to_end(&["run"], &f, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(75), "{err}");
    assert!(
        err.contains(&format!(
            "wgbroker: cannot start now: UDP socket [::]:{udp_port}"
        )),
        "{err}"
    );
}

#[test]
fn an_https_proxy_in_the_environment_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = minimal_config(dir.path(), "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let o = run_to_end(
        &["check"],
        &f,
        &[("HTTPS_PROXY", "https://u:pw@proxy.example:3128")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn dump_says_why_the_public_key_is_unavailable_instead_of_inventing_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("private.key");
    let f = dir.path().join("b.toml");
    std::fs::write(
        &f,
        format!(
            "[wireguard]\nprivate_key = {{ file = \"{}\" }}\naddress = \"10.77.0.2\"\n\
             [[wireguard.peers]]\npublic_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n\
             endpoint = \"127.0.0.1:9\"\nallowed_ips = [\"10.77.0.1/32\"]\n",
            key_file.display()
        ),
    )
    .expect("write");
    let public_key_of = |o: &Output| -> String {
        let doc: toml::Table = toml::from_str(&stdout(o)).expect("dump is TOML");
        doc["wireguard"]["public_key"]
            .as_str()
            .expect("public_key")
            .to_owned()
    };
    // No key file: the reason, never the public key of a made-up private key.
    let o = bin().arg("dump").arg("-c").arg(&f).output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = public_key_of(&o);
    let invented = wgbroker::keys::PrivateKey::from_bytes([0; 32])
        .public_key()
        .to_string();
    assert!(!stdout(&o).contains(&invented), "{}", stdout(&o));
    assert!(
        shown.starts_with("unavailable: cannot read ")
            && shown.contains(&key_file.display().to_string()),
        "{shown}"
    );
    // With the key readable, its public key.
    let key = stdout(&bin().arg("genkey").output().expect("genkey"));
    std::fs::write(&key_file, &key).expect("write key");
    let o = bin().arg("dump").arg("-c").arg(&f).output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        public_key_of(&o),
        stdout(&pubkey_via(bin(), &key)).trim(),
        "{}",
        stdout(&o)
    );
    assert!(
        !stdout(&o).contains(key.trim()),
        "the private key is dumped"
    );
}

/// `wgbroker <args> -c <fifo>` whose standard output is a pipe nobody reads: the read end is
/// closed before the configuration is written into the FIFO, so the command cannot print a byte
/// before its reader is gone (deterministic, unlike racing `| head -1`).
fn with_closed_stdout(args: &[&str], config: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("broker.toml");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let mut child = bin()
        .args(args)
        .arg("-c")
        .arg(&fifo)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    // Opening the FIFO blocks until the child opens it to read the configuration.
    std::fs::write(&fifo, config).expect("write the configuration into the FIFO");
    child.wait_with_output().expect("wait")
}

/// `wgbroker <args>` with standard output on /dev/full (every write fails with ENOSPC).
fn with_full_stdout(args: &[&str]) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    bin()
        .args(args)
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .expect("run")
}

#[test]
fn commands_that_print_end_with_their_status_when_stdout_is_gone_or_full() {
    use std::os::unix::process::ExitStatusExt;
    let ex = example();
    let ex = ex.to_str().expect("utf-8 path");
    let text = std::fs::read_to_string(ex).expect("example");
    let allowed = "https://ghe.example.com/api/v3/repos/acme/app";
    let denied = "https://evil.example.com/";
    // A closed pipe: the reader wanted no more; the command ends quietly with the status it
    // decided, as if the output had been read.
    for (args, extra, status) in [
        (&["explain"][..], &["GET", allowed][..], 0),
        (&["explain"], &["GET", denied], 1),
        (&["dump"], &[], 0),
    ] {
        let o = with_closed_stdout(args, &text, extra);
        assert_eq!(o.status.signal(), None, "{args:?}: {:?}", o.status);
        assert_eq!(o.status.code(), Some(status), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("cannot write"), "{}", stderr(&o));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let minimal = std::fs::read_to_string(minimal_config(
        dir.path(),
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    ))
    .expect("read");
    let o = with_closed_stdout(&["check"], &minimal, &[]);
    assert_eq!(o.status.code(), Some(0), "check: {}", stderr(&o));
    // A full disk: one line on stderr and 74 (EX_IOERR).
    let f = minimal_config(dir.path(), "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let f = f.to_str().expect("utf-8 path");
    for args in [
        &["explain", "-c", ex, "GET", allowed][..],
        &["explain", "-c", ex, "GET", denied],
        &["dump", "-c", ex],
        &["check", "-c", f],
        &["genkey"],
    ] {
        let o = with_full_stdout(args);
        assert_eq!(o.status.signal(), None, "{args:?}: {:?}", o.status);
        assert_eq!(o.status.code(), Some(74), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("wgbroker: cannot write to standard output: No space left on device"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// One `[[scm]]` entry: type, base URL, token.
type ScmEntry<'a> = (&'a str, &'a str, &'a str);

/// `[[scm]]` entries as TOML, code access on.
fn scm_entries(entries: &[ScmEntry<'_>]) -> String {
    entries
        .iter()
        .map(|(kind, base, token)| {
            format!(
                "[[scm]]\ntype = \"{kind}\"\nbase_url = \"{base}\"\ntoken = \"{token}\"\nallow_code_access = true\n"
            )
        })
        .collect()
}

#[test]
fn explain_gives_each_scm_instance_on_one_host_its_own_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = minimal_config(
        dir.path(),
        &scm_entries(&[
            ("gitlab", "https://scm.corp/gitlab-a/api/v4", "glpat-aaaa"),
            ("gitlab", "https://scm.corp/gitlab-b/api/v4", "glpat-bbbb"),
        ]),
    );
    let explain = |method: &str, url: &str| {
        let o = bin()
            .arg("explain")
            .arg("-c")
            .arg(&f)
            .args([method, url])
            .output()
            .expect("run");
        (o.status.code(), stdout(&o))
    };
    for (method, url, entry, root) in [
        (
            "GET",
            "https://scm.corp/gitlab-b/group/proj.git/info/refs?service=git-upload-pack",
            "scm[1]",
            "https://scm.corp/gitlab-b/",
        ),
        (
            "POST",
            "https://scm.corp/gitlab-b/group/proj.git/git-upload-pack",
            "scm[1]",
            "https://scm.corp/gitlab-b/",
        ),
        (
            "GET",
            "https://scm.corp/gitlab-a/group/proj.git/info/refs?service=git-upload-pack",
            "scm[0]",
            "https://scm.corp/gitlab-a/",
        ),
        (
            "GET",
            "https://scm.corp/gitlab-b/api/v4/projects/7",
            "scm[1]",
            "https://scm.corp/gitlab-b/",
        ),
    ] {
        let (code, out) = explain(method, url);
        assert_eq!(code, Some(0), "{method} {url}:\n{out}");
        let rule = out
            .lines()
            .find(|l| l.trim_start().starts_with("rule #"))
            .unwrap_or_else(|| panic!("no rule line:\n{out}"));
        assert!(rule.ends_with(&format!("of {entry}")), "{url}: {rule}");
        assert!(
            out.contains(&format!("pattern: {root}")),
            "{url}: the rule lives under {root}:\n{out}"
        );
        assert!(
            out.contains("sets header: PRIVATE-TOKEN: <redacted>"),
            "{out}"
        );
        assert!(!out.contains("glpat-"), "a token is printed:\n{out}");
    }
    // Outside both instances' web roots nothing is allowed, so no token is sent.
    let (code, out) = explain("GET", "https://scm.corp/group/proj.git/info/refs");
    assert_eq!(code, Some(1), "{out}");
}

#[test]
fn scm_entries_that_could_share_urls_are_config_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&[ScmEntry<'_>], &str)] = &[
        // The same type and base, spelt differently: the second could never match.
        (
            &[
                ("gitlab", "https://scm.corp/gitlab/api/v4", "glpat-aaaa"),
                (
                    "gitlab",
                    "https://SCM.corp:443/gitlab/api/v4/",
                    "glpat-bbbb",
                ),
            ],
            "same type and base_url as scm[0]",
        ),
        // One web root inside another: the outer instance's git rules match the inner's URLs.
        (
            &[
                ("gitlab", "https://scm.corp/api/v4", "glpat-aaaa"),
                ("gitlab", "https://scm.corp/gitlab-b/api/v4", "glpat-bbbb"),
            ],
            "inside the web root https://scm.corp of scm[0]",
        ),
        // Across types too.
        (
            &[
                ("bitbucket", "https://scm.corp/bb/rest/api/1.0", "bbtoken"),
                ("github", "https://scm.corp/api/v3", "ghp_token"),
            ],
            "contains the web root https://scm.corp/bb of scm[0]",
        ),
    ];
    for (entries, message) in cases {
        // Reported with the other errors of the file (here: too few headers).
        let f = minimal_config(
            dir.path(),
            &format!("{}[inbound]\nmax_headers = 1\n", scm_entries(entries)),
        );
        let o = bin().arg("check").arg("-c").arg(&f).output().expect("run");
        assert_eq!(o.status.code(), Some(78), "{entries:?}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("b.toml: scm[1].base_url: ") && err.contains(message),
            "{entries:?}:\n{err}"
        );
        assert!(err.contains("b.toml: inbound.max_headers: "), "{err}");
        assert!(
            !err.contains("glpat-") && !err.contains("ghp_token"),
            "{err}"
        );
    }
    // Disjoint web roots on one host are fine.
    let f = minimal_config(
        dir.path(),
        &scm_entries(&[
            ("gitlab", "https://scm.corp/gitlab/api/v4", "glpat-aaaa"),
            ("gitlab", "https://scm.corp/gitlab-b/api/v4", "glpat-bbbb"),
            ("github", "https://scm.corp/ghe/api/v3", "ghp_token"),
        ]),
    );
    let o = bin().arg("dump").arg("-c").arg(&f).output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
}

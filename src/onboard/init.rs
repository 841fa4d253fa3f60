//! `wgbroker init`: a first configuration and key from what the vendor gave, then `test`.
//!
//! Asks on the terminal for whatever its flags do not give (or, with `--non-interactive`,
//! refuses to guess), builds the configuration, validates it as `dump` would (before anything
//! is written), then writes the key (0600) and the configuration (0640, group `wgbroker` when
//! that group exists), never over an existing file without `--force`. The key is referenced
//! as the systemd credential the installed unit loads it as (`LoadCredential=NAME:KEY`), or by
//! its path when no unit loads it.

use std::io::{BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::config::{ConfigErrors, LoadMode};
use crate::keys::{PrivateKey, PublicKey};

/// The configuration the packaged unit runs with.
pub const DEFAULT_CONFIG: &str = "/etc/wgbroker/broker.toml";

/// `wgbroker init` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Never ask: every value comes from a flag (for automation); a missing one is an error.
    #[arg(long)]
    pub non_interactive: bool,
    /// The gateway's WireGuard public key (from the vendor).
    #[arg(long, value_name = "KEY")]
    pub gateway_public_key: Option<String>,
    /// The gateway's endpoint, `host:port` (from the vendor).
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,
    /// This broker's tunnel address (from the vendor).
    #[arg(long, value_name = "IP")]
    pub address: Option<String>,
    /// Tunnel addresses routed to the gateway; default: the /24 (IPv6: /64) around --address.
    #[arg(long, value_name = "CIDR")]
    pub allowed_ips: Option<String>,
    /// The vendor's heartbeat URL inside the tunnel, if it has one.
    #[arg(long, value_name = "URL")]
    pub heartbeat_url: Option<String>,
    /// An SCM: `TYPE=BASE_URL[,token=file:PATH|env:NAME|credential:NAME][,code]` (repeatable;
    /// `code` allows code access).
    #[arg(long = "scm", value_name = "SCM")]
    pub scms: Vec<String>,
    /// Where to write the configuration.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Where to write the private key; default: `private.key` beside the configuration.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Group that may read the configuration.
    #[arg(long, value_name = "NAME", default_value = "wgbroker")]
    pub group: String,
    /// Overwrite an existing configuration or key.
    #[arg(long)]
    pub force: bool,
    /// Do not run `wgbroker test` afterwards.
    #[arg(long)]
    pub no_test: bool,
    /// `test`'s report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How `init` ended.
#[derive(Debug)]
pub enum Outcome {
    /// Written; `test` passed (`Some(true)`), failed, or was not run.
    Written { test_passed: Option<bool> },
    /// A value is missing (non-interactive) or malformed.
    Usage(String),
    /// A file exists and `--force` was not given.
    Exists(PathBuf),
    /// The configuration it would write does not validate.
    Config(ConfigErrors),
    /// A file could not be written.
    Io(String),
}

/// Asks for values on the terminal (prompts on stderr), or refuses to.
struct Ask<'a> {
    interactive: bool,
    input: &'a mut dyn BufRead,
}

impl Ask<'_> {
    fn value(&mut self, given: Option<String>, flag: &str, prompt: &str) -> Result<String, String> {
        if let Some(v) = given {
            return Ok(v);
        }
        if !self.interactive {
            return Err(format!(
                "missing --{flag} (required with --non-interactive)"
            ));
        }
        self.line(prompt)?
            .filter(|l| !l.is_empty())
            .ok_or_else(|| format!("no {flag} given"))
    }

    fn line(&mut self, prompt: &str) -> Result<Option<String>, String> {
        eprint!("{prompt}: ");
        let _ = std::io::stderr().flush();
        let mut l = String::new();
        match self.input.read_line(&mut l) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(l.trim().to_owned())),
            Err(e) => Err(format!("cannot read the answer: {e}")),
        }
    }
}

/// One `--scm` value parsed.
fn scm_entry(spec: &str) -> Result<Table, String> {
    let bad = |why: &str| format!("--scm {spec:?}: {why}");
    let mut parts = spec.split(',');
    let (kind, url) = parts
        .next()
        .and_then(|p| p.split_once('='))
        .ok_or_else(|| bad("expected TYPE=BASE_URL"))?;
    let mut t = Table::new();
    t.insert("type".into(), kind.trim().into());
    t.insert("base_url".into(), url.trim().into());
    let mut code = false;
    for p in parts {
        match p.trim() {
            "code" => code = true,
            p => {
                let src = p
                    .strip_prefix("token=")
                    .ok_or_else(|| bad("expected token=SOURCE or code after the URL"))?;
                t.insert(
                    "token".into(),
                    Value::Table(secret_source(src).map_err(|e| bad(&e))?),
                );
            }
        }
    }
    t.insert("allow_code_access".into(), code.into());
    Ok(t)
}

/// `file:PATH`, `env:NAME`, `credential:NAME` as a secret table. Never a literal token: that
/// would sit in a shell history.
fn secret_source(src: &str) -> Result<Table, String> {
    let (kind, arg) = src
        .split_once(':')
        .filter(|(k, a)| ["file", "env", "credential"].contains(k) && !a.is_empty())
        .ok_or("a token source is file:PATH, env:NAME or credential:NAME")?;
    let mut t = Table::new();
    t.insert(kind.into(), arg.into());
    Ok(t)
}

/// The gateway's side of the tunnel by default: the /24 (/64) around the broker's address.
fn default_allowed_ips(address: &str) -> Result<String, String> {
    let ip: std::net::IpAddr = address
        .parse()
        .map_err(|_| format!("--address {address:?} is not an IP address"))?;
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    ipnet::IpNet::new(ip, prefix)
        .map(|n| n.trunc().to_string())
        .map_err(|e| e.to_string())
}

/// Runs `init`; `input` is where interactive answers come from.
pub fn run(args: &Args, input: &mut dyn BufRead, out: &mut dyn Write) -> Outcome {
    let key_path = args
        .key
        .clone()
        .unwrap_or_else(|| args.config.with_file_name("private.key"));
    for p in [&args.config, &key_path] {
        if p.exists() && !args.force {
            return Outcome::Exists(p.clone());
        }
    }
    let mut ask = Ask {
        interactive: !args.non_interactive,
        input,
    };
    let text = match build(args, &key_path, &mut ask) {
        Ok(t) => t,
        Err(e) => return Outcome::Usage(e),
    };
    // Validate what would be written before writing anything (the key does not exist yet: its
    // absence is a warning in this mode).
    if let Err(e) = crate::config::load_str(
        &[(args.config.clone(), text.clone())],
        LoadMode::Policy,
        &crate::config::ProcessEnv,
    ) {
        return Outcome::Config(e);
    }
    let key = match PrivateKey::generate() {
        Ok(k) => k,
        Err(e) => return Outcome::Io(e.to_string()),
    };
    if let Err(e) = write(args, &key_path, &key, &text, out) {
        return Outcome::Io(e);
    }
    let _ = writeln!(
        out,
        "broker public key (give it to the vendor): {}",
        key.public_key()
    );
    if args.no_test {
        return Outcome::Written { test_passed: None };
    }
    let _ = writeln!(out);
    let passed = super::run_test(std::slice::from_ref(&args.config), args.json, out);
    Outcome::Written {
        test_passed: Some(passed),
    }
}

/// The configuration text, from flags and answers.
fn build(args: &Args, key_path: &Path, ask: &mut Ask<'_>) -> Result<String, String> {
    let public = ask.value(
        args.gateway_public_key.clone(),
        "gateway-public-key",
        "Gateway public key (from the vendor)",
    )?;
    PublicKey::from_base64(&public).map_err(|e| format!("gateway public key: {e}"))?;
    let endpoint = ask.value(
        args.endpoint.clone(),
        "endpoint",
        "Gateway endpoint, host:port (from the vendor)",
    )?;
    let address = ask.value(
        args.address.clone(),
        "address",
        "This broker's tunnel address (from the vendor)",
    )?;
    let allowed = match &args.allowed_ips {
        Some(a) => a.clone(),
        None => default_allowed_ips(&address)?,
    };
    let heartbeat = match (&args.heartbeat_url, ask.interactive) {
        (Some(u), _) => Some(u.clone()),
        (None, true) => ask
            .line("Heartbeat URL inside the tunnel (empty: none)")?
            .filter(|l| !l.is_empty()),
        (None, false) => None,
    };
    let mut scms = Vec::new();
    for s in &args.scms {
        scms.push(Value::Table(scm_entry(s)?));
    }
    if args.scms.is_empty() && ask.interactive {
        while let Some(kind) = ask
            .line("SCM type: github, gitlab, bitbucket, azuredevops (empty: no more)")?
            .filter(|l| !l.is_empty())
        {
            let url = ask.value(
                None,
                "scm",
                "  base URL (e.g. https://gitlab.example.com/api/v4)",
            )?;
            let token = ask
                .line("  token from file:PATH, env:NAME or credential:NAME (empty: none)")?
                .filter(|l| !l.is_empty());
            let code = ask
                .line("  allow code access? [y/N]")?
                .is_some_and(|a| a.eq_ignore_ascii_case("y"));
            let mut spec = format!("{kind}={url}");
            if let Some(t) = token {
                spec.push_str(&format!(",token={t}"));
            }
            if code {
                spec.push_str(",code");
            }
            scms.push(Value::Table(scm_entry(&spec)?));
        }
    }

    let mut key = Table::new();
    let absolute = std::path::absolute(key_path).unwrap_or_else(|_| key_path.to_path_buf());
    let unit_dirs: Vec<&Path> = super::credentials::UNIT_DIRS
        .iter()
        .map(Path::new)
        .collect();
    match super::credentials::from_units(&unit_dirs)
        .into_iter()
        .find(|(_, p)| *p == absolute)
    {
        Some((name, _)) => key.insert("credential".into(), name.into()),
        None => key.insert("file".into(), absolute.display().to_string().into()),
    };
    let mut peer = Table::new();
    peer.insert("public_key".into(), public.into());
    peer.insert("endpoint".into(), endpoint.into());
    peer.insert("allowed_ips".into(), Value::Array(vec![allowed.into()]));
    let mut wg = Table::new();
    wg.insert("private_key".into(), Value::Table(key));
    wg.insert("address".into(), address.into());
    wg.insert("peers".into(), Value::Array(vec![Value::Table(peer)]));
    let mut root = Table::new();
    root.insert("wireguard".into(), Value::Table(wg));
    if let Some(u) = heartbeat {
        let mut hb = Table::new();
        hb.insert("url".into(), u.into());
        root.insert("heartbeat".into(), Value::Table(hb));
    }
    if !scms.is_empty() {
        root.insert("scm".into(), Value::Array(scms));
    }
    let body = toml::to_string_pretty(&root).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Written by `wgbroker init`. Every key: README, \"Configuration reference\".\n\
         # Check it with `wgbroker check -c FILE`, try it with `wgbroker test -c FILE`.\n\n{body}"
    ))
}

/// The group id of `name` from /etc/group.
fn group_id(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1).and_then(|g| g.parse().ok()))?
        })
}

/// Writes the key (0600) and the configuration (0640, root:`group` when the group exists).
fn write(
    args: &Args,
    key_path: &Path,
    key: &PrivateKey,
    text: &str,
    out: &mut dyn Write,
) -> Result<(), String> {
    for p in [&args.config, &key_path.to_path_buf()] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    let create = |path: &Path, mode: u32, data: &[u8]| -> Result<(), String> {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).mode(mode);
        if args.force {
            o.create(true).truncate(true);
        } else {
            o.create_new(true);
        }
        let mut f = o
            .open(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        // An existing file keeps its mode through `truncate`: set it.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .and_then(|()| f.write_all(data))
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let mut key_text = key.to_base64();
    key_text.push('\n');
    create(key_path, 0o600, key_text.as_bytes())?;
    let _ = writeln!(out, "wrote {} (0600)", key_path.display());
    create(&args.config, 0o640, text.as_bytes())?;
    match group_id(&args.group) {
        Some(gid) => match std::os::unix::fs::chown(&args.config, Some(0), Some(gid)) {
            Ok(()) => {
                let _ = writeln!(
                    out,
                    "wrote {} (root:{} 0640)",
                    args.config.display(),
                    args.group
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "wrote {} (0640; could not give it to root:{}: {e})",
                    args.config.display(),
                    args.group
                );
            }
        },
        None => {
            let _ = writeln!(
                out,
                "wrote {} (0640; no group {:?} here: the package creates it)",
                args.config.display(),
                args.group
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> Args {
        Args {
            non_interactive: true,
            gateway_public_key: Some("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into()),
            endpoint: Some("gw.example:51820".into()),
            address: Some("10.77.0.2".into()),
            allowed_ips: None,
            heartbeat_url: Some("http://10.77.0.1/ping".into()),
            scms: vec!["gitlab=https://gitlab.example.com/api/v4,token=env:GL_TOKEN,code".into()],
            config: dir.join("etc/broker.toml"),
            key: None,
            group: "wgbroker-no-such-group".into(),
            force: false,
            no_test: true,
            json: false,
        }
    }

    #[test]
    fn writes_a_valid_configuration_and_a_private_key_and_never_overwrites() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = args(d.path());
        let mut out = Vec::new();
        let o = run(&a, &mut std::io::empty(), &mut out);
        assert!(matches!(o, Outcome::Written { test_passed: None }), "{o:?}");
        let key = d.path().join("etc/private.key");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!((mode(&key), mode(&a.config)), (0o600, 0o640));
        let k = PrivateKey::from_base64(std::fs::read_to_string(&key).expect("key").trim())
            .expect("a key");
        let shown = String::from_utf8(out).expect("utf-8");
        assert!(shown.contains(&k.public_key().to_string()), "{shown}");
        let env = |v: &str| (v == "GL_TOKEN").then(|| "glpat-x".to_owned());
        let loaded = crate::config::load(std::slice::from_ref(&a.config), LoadMode::Full, &env)
            .expect("the written configuration loads");
        let c = &loaded.config;
        assert_eq!(c.wireguard.private_key.public_key(), k.public_key());
        assert_eq!(
            c.wireguard.peers[0].allowed_ips[0].to_string(),
            "10.77.0.0/24"
        );
        assert!(c.scm[0].allow_code_access && c.heartbeat.is_some());
        // Again: refused, files untouched; with --force: a new key.
        let o = run(&a, &mut std::io::empty(), &mut Vec::new());
        assert!(matches!(&o, Outcome::Exists(p) if *p == a.config), "{o:?}");
        let forced = Args {
            force: true,
            ..a.clone()
        };
        assert!(matches!(
            run(&forced, &mut std::io::empty(), &mut Vec::new()),
            Outcome::Written { .. }
        ));
        assert_ne!(
            std::fs::read_to_string(&key).expect("key").trim(),
            k.to_base64()
        );
    }

    #[test]
    fn non_interactive_refuses_to_guess_and_interactive_asks() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = Args {
            endpoint: None,
            ..args(d.path())
        };
        let o = run(&a, &mut std::io::empty(), &mut Vec::new());
        assert!(
            matches!(&o, Outcome::Usage(m) if m.contains("--endpoint")),
            "{o:?}"
        );
        assert!(!a.config.exists());
        let a = Args {
            non_interactive: false,
            heartbeat_url: None,
            scms: Vec::new(),
            ..a
        };
        let answers = "gw.example:51820\n\ngithub\nhttps://ghe.example.com/api/v3\nfile:/nonexistent/t\ny\n\n";
        let o = run(&a, &mut answers.as_bytes(), &mut Vec::new());
        assert!(matches!(o, Outcome::Written { .. }), "{o:?}");
        let text = std::fs::read_to_string(&a.config).expect("config");
        assert!(
            text.contains("https://ghe.example.com/api/v3")
                && text.contains("allow_code_access = true"),
            "{text}"
        );
    }

    #[test]
    fn an_invalid_answer_writes_nothing() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = Args {
            endpoint: Some("no port".into()),
            ..args(d.path())
        };
        let o = run(&a, &mut std::io::empty(), &mut Vec::new());
        assert!(matches!(o, Outcome::Config(_)), "{o:?}");
        assert!(!a.config.exists() && !d.path().join("etc/private.key").exists());
    }
}

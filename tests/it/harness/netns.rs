//! Network namespaces for tests against real peers: two namespaces joined by a veth pair, torn
//! down on drop. Addresses exist only inside these namespaces; nothing leaves the machine.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces, `vendor` and `broker`, with a veth pair between them.
#[derive(Debug)]
pub struct Pair {
    pub vendor: String,
    pub broker: String,
    /// Vendor end of the veth, as seen from the broker namespace.
    pub vendor_ip: String,
    pub broker_ip: String,
    children: Vec<Child>,
}

impl Pair {
    /// Creates the namespaces; `subnet` picks a distinct /30 per test (0..=255).
    pub fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let vendor = format!("wgbv-{tag}-{id}");
        let broker = format!("wgbb-{tag}-{id}");
        let octet = (std::process::id() as usize * 7 + n as usize * 4) % 250;
        let vendor_ip = format!("10.213.{octet}.1");
        let broker_ip = format!("10.213.{octet}.2");
        let pair = Self {
            vendor,
            broker,
            vendor_ip,
            broker_ip,
            children: Vec::new(),
        };
        let (va, vb) = (
            format!("v{}a", n + 100 * (std::process::id() % 1000)),
            format!("v{}b", n + 100 * (std::process::id() % 1000)),
        );
        sh(&["ip", "netns", "add", &pair.vendor]);
        sh(&["ip", "netns", "add", &pair.broker]);
        sh(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        sh(&["ip", "link", "set", &va, "netns", &pair.vendor]);
        sh(&["ip", "link", "set", &vb, "netns", &pair.broker]);
        pair.exec(
            &pair.vendor,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/30", pair.vendor_ip),
                "dev",
                &va,
            ],
        );
        pair.exec(
            &pair.broker,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/30", pair.broker_ip),
                "dev",
                &vb,
            ],
        );
        for (ns, dev) in [(&pair.vendor, &va), (&pair.broker, &vb)] {
            pair.exec(ns, &["ip", "link", "set", dev, "up"]);
            pair.exec(ns, &["ip", "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs a command inside namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A command prepared to run inside `ns`.
    pub fn command(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// Starts a long-running child inside `ns`; it is killed on drop.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) -> &mut Child {
        let child = self
            .command(ns, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    /// The child started by [`Pair::spawn`] with process id `pid`.
    pub fn child(&mut self, pid: u32) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.id() == pid)
    }

    /// Sets up `wireguard-go` as the vendor's gateway: interface `ifname` with `tunnel_ip/24`,
    /// listening on UDP 51820, one peer (the broker) with `broker_public` and `broker_tunnel_ip`.
    /// wireguard-go's control socket is `/var/run/wireguard/<ifname>.sock`, shared by every
    /// namespace: tests that may run at the same time as others (in this process or another)
    /// need a name of their own. Returns wireguard-go's process id (see [`Pair::child`]).
    pub fn start_wireguard_go_on(
        &mut self,
        ifname: &str,
        private_key: &str,
        tunnel_ip: &str,
        broker_public: &str,
        broker_tunnel_ip: &str,
    ) -> u32 {
        let ns = self.vendor.clone();
        // wireguard-go is an outside program starting up: once in CI (2026-12-05, full suite on
        // two cores) it never opened its control socket within 30 s, with its output discarded.
        // Its output now goes to a file; an attempt that exits or stays silent for 20 s is
        // reported on stderr with what it said and made again, at most three times in all.
        let log_path = std::env::temp_dir().join(format!("{ns}-{ifname}.wireguard-go.log"));
        let said = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let mut failures = Vec::new();
        let mut pid = 0;
        for attempt in 1..=3 {
            let log = std::fs::File::create(&log_path).expect("wireguard-go log file");
            let mut c = self.command(&ns, &["wireguard-go", "-f", ifname]);
            c.env("WG_PROCESS_FOREGROUND", "1")
                .env("LOG_LEVEL", "verbose")
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log);
            let mut child = c.spawn().expect("wireguard-go (apt install wireguard-go)");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let outcome = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(format!("exited ({status})"));
                }
                let up = self
                    .command(&ns, &["wg", "show", ifname])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if up {
                    break Ok(());
                }
                if std::time::Instant::now() > deadline {
                    break Err("no control socket after 20 s".to_string());
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            match outcome {
                Ok(()) => {
                    pid = child.id();
                    self.children.push(child);
                    break;
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let failure = format!(
                        "wireguard-go {ifname} in {ns}, attempt {attempt}: {why}; it said: {}",
                        said()
                    );
                    eprintln!("{failure}");
                    failures.push(failure);
                }
            }
        }
        let _ = std::fs::remove_file(&log_path);
        assert!(
            failures.len() < 3,
            "wireguard-go never came up:\n{}",
            failures.join("\n")
        );
        let key_file = std::env::temp_dir().join(format!("{ns}.key"));
        std::fs::write(&key_file, private_key).expect("write key");
        self.exec(
            &ns,
            &[
                "wg",
                "set",
                ifname,
                "private-key",
                key_file.to_str().expect("utf-8"),
                "listen-port",
                "51820",
                "peer",
                broker_public,
                "allowed-ips",
                &format!("{broker_tunnel_ip}/32"),
            ],
        );
        let _ = std::fs::remove_file(&key_file);
        self.exec(
            &ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{tunnel_ip}/24"),
                "dev",
                ifname,
            ],
        );
        self.exec(&ns, &["ip", "link", "set", ifname, "up"]);
        pid
    }

    /// Kills the child started here with process id `pid` (SIGKILL) and reaps it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.swap_remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.vendor, &self.broker] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

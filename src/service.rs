//! The broker as a service: what `wgbroker run` does between loading the configuration and
//! exiting, and what `check` shares with it.
//!
//! 1. [`prepare`]: everything that can fail before an executor runs — the runtime's
//!    ([`runtime::prepare`]) and the admin listener's address;
//! 2. [`start`]: the executors ([`runtime::start`]), then the admin listener on its own thread;
//! 3. [`run`]: signals first, start, `READY=1` to systemd, a watchdog thread that feeds systemd
//!    while every executor makes progress, then the control loop ([`control`]): `SIGHUP` reloads
//!    the rules, `SIGINT`/`SIGTERM` drain the broker and stop it.
//!
//! The command line ([`crate::cli`]) loads the configuration, calls these and turns their errors
//! into exit statuses; the runtime knows nothing of the admin listener, signals or systemd.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::{Config, ConfigErrors, Loaded};
use crate::runtime::{self, BrokerHandle, ExecutorFailed, Purpose, ReloadTimedOut, StartError};
use crate::status::Status;

/// How long SIGTERM/SIGINT lets in-flight requests finish (systemd's default stop timeout is
/// 90 s; this stays well inside it).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Why the service could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime could not start; [`StartError::cause`] says whose fix it is.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The executors ran, but the admin listener (bound by [`prepare`]) could not be served; the
    /// executors have been stopped. Temporary: a thread the system could not give.
    #[error("admin listener {listen}: {source}")]
    Admin {
        listen: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The signal handlers could not be installed (before anything started).
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// An executor ended with an error while the broker ran or drained.
    #[error(transparent)]
    Stopped(#[from] ExecutorFailed),
}

/// What [`prepare`] made: the runtime's part and the admin listener, bound.
#[derive(Debug)]
pub struct Prepared {
    /// The runtime's part; its `bind_warnings` include the admin listener's.
    pub runtime: runtime::Prepared,
    admin: Option<TcpListener>,
}

/// Everything that can fail before an executor runs: [`runtime::prepare`], then the admin
/// listener bound (`[admin] listen`). `check` runs this and drops the result.
pub fn prepare(loaded: &Loaded, purpose: Purpose) -> Result<Prepared, StartError> {
    let mut runtime = runtime::prepare(loaded, purpose)?;
    let admin = &loaded.config.admin;
    let admin = if admin.enabled {
        match TcpListener::bind(admin.listen) {
            Ok(l) => Some(l),
            Err(e) => {
                let what = || format!("admin listener {}", admin.listen);
                purpose.bound(Err(e), what, &mut runtime.bind_warnings)?;
                None
            }
        }
    } else {
        None
    };
    Ok(Prepared { runtime, admin })
}

/// Starts the broker `loaded` describes: its executors, then its admin listener. What `run`
/// starts, and what the demo, the load test and the tests start in-process.
pub fn start(loaded: &Loaded) -> Result<BrokerHandle, Error> {
    let Prepared { runtime, admin } = prepare(loaded, Purpose::Start)?;
    let broker = runtime::start(loaded, runtime)?;
    if let Some(listener) = admin {
        match crate::admin::serve(listener, broker.status().clone(), broker.stop_flag()) {
            Ok(addr) => broker
                .status()
                .admin_port
                .store(addr.port(), Ordering::Relaxed),
            Err(source) => {
                let _ = broker.shutdown();
                return Err(Error::Admin {
                    listen: loaded.config.admin.listen,
                    source,
                });
            }
        }
    }
    Ok(broker)
}

/// Runs the broker `loaded` describes until SIGINT or SIGTERM, then drains it; `load` loads the
/// configuration again on each SIGHUP. Under systemd: `READY=1` once every executor runs,
/// `RELOADING=1` … `READY=1` around each reload, the watchdog fed while every executor makes
/// progress, `STOPPING=1` when the drain begins.
pub fn run(
    loaded: Loaded,
    load: impl FnMut() -> Result<Loaded, ConfigErrors>,
) -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Signals first: a signal that arrives during start-up must not kill the process uncleanly.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(Error::Signals)?;
    let broker = start(&loaded)?;
    let c = &loaded.config;
    tracing::info!(
        event = "broker.start",
        public_key = %c.wireguard.private_key.public_key(),
        address = %c.wireguard.address,
        udp_port = broker.status().udp_port.load(Ordering::Relaxed),
        inbound_port = c.inbound.listen_port,
        peers = c.wireguard.peers.len(),
        rules = loaded.allowlist.rules().len(),
    );
    // READY now: `start` returned, so every executor runs and every shard listens (an executor
    // that could not start failed `start` above: no READY).
    crate::notify::ready();
    let status = broker.status().clone();
    let _ = std::thread::Builder::new()
        .name("wgbroker-watchdog".into())
        .spawn(move || supervise(&status));
    let signals = signals.forever().map(|s| match s {
        SIGHUP => Signal::Reload,
        _ => Signal::Stop,
    });
    control(&broker, c, signals, load);
    tracing::info!(
        event = "broker.stop",
        drain_deadline_s = DRAIN_DEADLINE.as_secs()
    );
    crate::notify::stopping();
    let left = broker.drain(DRAIN_DEADLINE)?;
    if left > 0 {
        tracing::warn!(event = "broker.drain_deadline", open_connections = left);
    }
    Ok(())
}

/// What the control thread is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGHUP`: load the configuration again and apply its rules.
    Reload,
    /// `SIGINT`, `SIGTERM`: drain and stop.
    Stop,
}

/// What a reload needs of a running broker (a trait, so that [`control`] and [`reload`] are
/// tested without executors).
pub trait Reload {
    /// Swaps the rules of `loaded` into the running broker.
    fn reload(&self, loaded: &Loaded) -> Result<(), ReloadTimedOut>;
}

impl Reload for BrokerHandle {
    fn reload(&self, loaded: &Loaded) -> Result<(), ReloadTimedOut> {
        BrokerHandle::reload(self, loaded)
    }
}

/// Handles `signals` until [`Signal::Stop`] (or until they end): each [`Signal::Reload`] is one
/// [`reload`], framed by `RELOADING=1` and `READY=1`, so that `systemctl reload` returns when it
/// is over. Returns how many reloads it handled.
pub fn control(
    broker: &impl Reload,
    started: &Config,
    signals: impl IntoIterator<Item = Signal>,
    mut load: impl FnMut() -> Result<Loaded, ConfigErrors>,
) -> usize {
    let mut reloads = 0;
    for signal in signals {
        match signal {
            Signal::Reload => {
                crate::notify::reloading();
                log_reload(&reload(broker, started, load()));
                crate::notify::ready();
                reloads += 1;
            }
            Signal::Stop => break,
        }
    }
    reloads
}

/// What a reload came to.
#[derive(Debug)]
pub enum Reloaded {
    /// The configuration is valid: its rules were swapped in (`swapped`, or not by every shard
    /// in time); `needs_restart` names the changed sections only a restart applies.
    Loaded {
        rules: usize,
        swapped: Result<(), ReloadTimedOut>,
        needs_restart: Vec<String>,
    },
    /// The configuration is invalid: the running one stays.
    Invalid(ConfigErrors),
}

/// One reload: validate `loaded` (read with the credentials this process holds: systemd does
/// not hand them to `ExecReload=`), swap what a reload applies into `broker`, and name what
/// needs a restart.
/// What a reload applies is listed in [`crate::config::reload`]; the rest keeps running as the
/// process `started`, so each reload is compared with that configuration.
pub fn reload(
    broker: &impl Reload,
    started: &Config,
    loaded: Result<Loaded, ConfigErrors>,
) -> Reloaded {
    match loaded {
        Ok(new) => {
            crate::telemetry::set_level(&new.config.log);
            crate::telemetry::set_format(&new.config.log);
            Reloaded::Loaded {
                rules: new.allowlist.rules().len(),
                swapped: broker.reload(&new),
                needs_restart: crate::config::reload::needs_restart(started, &new.config),
            }
        }
        Err(errors) => Reloaded::Invalid(errors),
    }
}

fn log_reload(r: &Reloaded) {
    match r {
        Reloaded::Loaded {
            rules,
            swapped,
            needs_restart,
        } => {
            match swapped {
                Ok(()) => tracing::info!(event = "config.reload", result = "applied", rules),
                Err(e) => tracing::error!(event = "config.reload", result = "failed", error = %e),
            }
            if !needs_restart.is_empty() {
                tracing::warn!(
                    event = "config.reload",
                    needs_restart = %needs_restart.join(", "),
                    "changes to these sections apply at the next restart"
                );
            }
        }
        Reloaded::Invalid(errors) => tracing::error!(
            event = "config.reload",
            result = "invalid, keeping the running configuration",
            errors = %errors
        ),
    }
}

/// Feeds the systemd watchdog while every executor advances, and keeps STATUS current.
fn supervise(status: &Status) {
    use std::sync::atomic::Ordering::Relaxed;
    // Half of WatchdogSec= (see notify::watchdog_interval), or every 5 s for STATUS alone.
    let period = crate::notify::watchdog_interval()
        .unwrap_or(Duration::from_secs(5))
        .max(Duration::from_millis(100));
    let mut last = status.beats();
    loop {
        std::thread::sleep(period);
        if status.stopped.load(Relaxed) {
            return;
        }
        let now = status.beats();
        let stalled: Vec<usize> = now
            .iter()
            .zip(&last)
            .enumerate()
            .filter(|(_, (a, b))| a == b)
            .map(|(i, _)| i)
            .collect();
        if stalled.is_empty() {
            crate::notify::watchdog();
        } else {
            tracing::error!(event = "runtime.stall", executors = ?stalled);
        }
        last = now;
        let hs = status.handshake_age().map_or_else(
            || "no handshake yet".to_owned(),
            |a| format!("handshake {}s ago", a.as_secs()),
        );
        crate::notify::status(&format!(
            "{hs}; {} connections, {} requests; heartbeat {}",
            status.connections.load(Relaxed),
            status.requests(),
            if status.heartbeat_passing.load(Relaxed) {
                "ok"
            } else {
                "failing"
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::PathBuf;

    use super::*;

    /// A broker that records the rule counts it was given, or times out.
    #[derive(Default)]
    struct FakeBroker {
        reloads: RefCell<Vec<usize>>,
        times_out: bool,
    }

    impl Reload for FakeBroker {
        fn reload(&self, loaded: &Loaded) -> Result<(), ReloadTimedOut> {
            self.reloads
                .borrow_mut()
                .push(loaded.allowlist.rules().len());
            if self.times_out {
                return Err(ReloadTimedOut {
                    within: Duration::from_secs(2),
                });
            }
            Ok(())
        }
    }

    const BASE: &str = "[wireguard]\nprivate_key = \"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\"\naddress = \"10.0.0.2\"\n[[wireguard.peers]]\npublic_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\nendpoint = \"127.0.0.1:1\"\nallowed_ips = [\"10.0.0.1/32\"]\n";

    fn load(extra: &str) -> Result<Loaded, ConfigErrors> {
        crate::config::load_str(
            &[(PathBuf::from("t.toml"), format!("{BASE}{extra}"))],
            crate::config::LoadMode::Full,
            &|_: &str| None,
        )
    }

    const RULE: &str =
        "[[allow]]\nurl = \"https://ghe.example.com/api/v3/meta\"\nmethods = [\"GET\"]\n";

    #[test]
    fn a_valid_reload_swaps_the_rules_and_names_the_sections_that_need_a_restart() {
        let started = load("").expect("valid");
        let broker = FakeBroker::default();
        let new = load(&format!("{RULE}[admin]\nlisten = \"127.0.0.1:9001\"\n"));
        match reload(&broker, &started.config, new) {
            Reloaded::Loaded {
                rules,
                swapped: Ok(()),
                needs_restart,
            } => {
                assert_eq!(rules, started.allowlist.rules().len() + 1);
                assert_eq!(needs_restart, ["admin"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            *broker.reloads.borrow(),
            [started.allowlist.rules().len() + 1]
        );
    }

    #[test]
    fn an_invalid_configuration_leaves_the_running_rules_alone() {
        let started = load("").expect("valid");
        let broker = FakeBroker::default();
        let r = reload(&broker, &started.config, load("[[allow]]\nurl = 7\n"));
        assert!(matches!(r, Reloaded::Invalid(_)), "{r:?}");
        assert!(broker.reloads.borrow().is_empty(), "nothing swapped in");
    }

    #[test]
    fn a_reload_not_every_shard_applied_is_reported_with_what_needs_a_restart() {
        let started = load("").expect("valid");
        let broker = FakeBroker {
            times_out: true,
            ..FakeBroker::default()
        };
        let r = reload(&broker, &started.config, load(RULE));
        match r {
            Reloaded::Loaded {
                swapped: Err(e),
                needs_restart,
                ..
            } => {
                assert_eq!(
                    e.to_string(),
                    "not every shard applied the new configuration within 2 s"
                );
                assert!(needs_restart.is_empty(), "{needs_restart:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_control_loop_reloads_on_each_reload_signal_and_returns_at_the_first_stop() {
        let started = load("").expect("valid");
        let broker = FakeBroker::default();
        let mut loads = 0;
        let signals = [Signal::Reload, Signal::Reload, Signal::Stop, Signal::Reload];
        let handled = control(&broker, &started.config, signals, || {
            loads += 1;
            load(if loads == 1 {
                RULE
            } else {
                "[[allow]]\nurl = 7\n"
            })
        });
        assert_eq!(handled, 2);
        assert_eq!(loads, 2, "the signal after Stop is not handled");
        assert_eq!(
            broker.reloads.borrow().len(),
            1,
            "the invalid one is not swapped in"
        );
    }
}

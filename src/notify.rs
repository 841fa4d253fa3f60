//! Service-manager notifications: tell systemd when the broker is ready, reloading or stopping,
//! show a one-line status in `systemctl status`, and keep the watchdog fed.
//!
//! The unit (`systemd/wgbroker.service`) runs the broker with `Type=notify`, `NotifyAccess=main`
//! and `WatchdogSec=30`, so systemd waits for [`ready`] before it counts the start as done and
//! restarts the broker when [`watchdog`] stops arriving.
//!
//! Invariants:
//! * Every function is a no-op when the process is not started by systemd (`NOTIFY_SOCKET` unset):
//!   `wgbroker run` in a terminal, in a container or in a test behaves exactly as before.
//! * Nothing here blocks or fails the caller: a notification that cannot be delivered is logged
//!   (`event = "systemd.notify"`) and dropped. A service manager that stops hearing from us acts
//!   on its own (start timeout, watchdog restart).
//! * The environment is only read, never changed: unsetting `NOTIFY_SOCKET` is `unsafe` once
//!   threads exist, and the broker's executors start early.
//!
//! The reload protocol for the caller: [`reloading`] when `SIGHUP` arrives, then [`ready`] once
//! the new configuration is in force (or has been rejected and the old one kept), so that
//! `systemctl reload` returns only when the reload is over.

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;

/// Start-up is complete: the tunnel socket is open and the executors run.
///
/// Also sent after a reload has finished, successfully or not.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// A configuration reload has begun; follow it with [`ready`] when it is over.
///
/// Sends `MONOTONIC_USEC` in the same message, which systemd 253 and newer require with
/// `RELOADING=1` and older versions ignore.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutdown has begun (the broker is draining).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A free-form one-line status, shown by `systemctl status wgbroker`.
///
/// Line breaks are replaced by spaces: the notification protocol is line-based, and a newline
/// inside the text would start another (unintended) assignment.
pub fn status(text: &str) {
    let line: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    send(&[NotifyState::Status(&line)]);
}

/// Feeds the watchdog; call at least every [`watchdog_interval`].
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to call [`watchdog`]: half of the unit's `WatchdogSec=`, as `sd_watchdog_enabled(3)`
/// recommends, so one late tick does not get the broker killed.
///
/// `None` when the watchdog is off for this process (no `WATCHDOG_USEC`, or `WATCHDOG_PID` names
/// another process).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|timeout| !timeout.is_zero())
        .map(|timeout| timeout / 2)
}

/// Sends one notification message; logs and drops it when delivery fails.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = deliver(states) {
        tracing::warn!(event = "systemd.notify", error = %e);
    }
}

/// Sends one notification message. `Ok(false)`: not under systemd, nothing was sent.
fn deliver(states: &[NotifyState<'_>]) -> io::Result<bool> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(false);
    }
    sd_notify::notify(states).map(|()| true)
}

#[cfg(test)]
mod tests {
    //! The environment cannot be changed safely inside a multi-threaded test binary, so each test
    //! re-runs this test binary as a child with the environment it needs; the child runs only
    //! [`child`], which does nothing unless `WGBROKER_NOTIFY_TEST` tells it what to do.

    use std::os::unix::net::UnixDatagram;
    use std::process::{Command, Output};
    use std::time::Duration;

    use super::*;

    const ROLE: &str = "WGBROKER_NOTIFY_TEST";

    /// Runs [`child`] in a fresh process with `role` and the given extra environment.
    fn run_child(role: &str, env: &[(&str, &str)]) -> Output {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "notify::tests::child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("spawn the test binary");
        assert!(
            out.status.success(),
            "child {role} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child did not run the probe test"
        );
        out
    }

    /// The child side; a no-op in an ordinary test run.
    #[test]
    fn child() {
        match std::env::var(ROLE).as_deref() {
            Ok("noop") => {
                for (name, r) in [
                    ("ready", deliver(&[NotifyState::Ready])),
                    ("stopping", deliver(&[NotifyState::Stopping])),
                    ("status", deliver(&[NotifyState::Status("x")])),
                    ("watchdog", deliver(&[NotifyState::Watchdog])),
                ] {
                    assert!(matches!(r, Ok(false)), "{name}: {r:?}");
                }
                // The public functions return nothing; they must not panic either.
                ready();
                reloading();
                stopping();
                status("x");
                watchdog();
                assert_eq!(watchdog_interval(), None);
            }
            Ok("send") => {
                ready();
                status("x");
                status("two\nlines");
                watchdog();
                reloading();
                stopping();
            }
            Ok("watchdog") => {
                let want = std::env::var("WANT").expect("WANT");
                assert_eq!(format!("{:?}", watchdog_interval()), want);
            }
            Ok(other) => panic!("unknown role {other}"),
            Err(_) => {}
        }
    }

    #[test]
    fn everything_is_a_no_op_without_notify_socket() {
        run_child("noop", &[]);
    }

    #[test]
    fn messages_reach_the_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let path_str = path.to_str().expect("utf-8 temp path");
        run_child("send", &[("NOTIFY_SOCKET", path_str)]);

        let mut buf = [0u8; 512];
        let mut next = || {
            let n = sock.recv(&mut buf).expect("a notification");
            String::from_utf8(buf[..n].to_vec()).expect("utf-8")
        };
        assert_eq!(next(), "READY=1\n");
        assert_eq!(next(), "STATUS=x\n");
        assert_eq!(next(), "STATUS=two lines\n");
        assert_eq!(next(), "WATCHDOG=1\n");
        let reload = next();
        assert!(
            reload.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reload:?}"
        );
        assert_eq!(next(), "STOPPING=1\n");
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process_only() {
        run_child(
            "watchdog",
            &[("WATCHDOG_USEC", "30000000"), ("WANT", "Some(15s)")],
        );
        // PID 1 is never the test process: the watchdog belongs to someone else.
        run_child(
            "watchdog",
            &[
                ("WATCHDOG_USEC", "30000000"),
                ("WATCHDOG_PID", "1"),
                ("WANT", "None"),
            ],
        );
        run_child("watchdog", &[("WANT", "None")]);
    }
}

//! Why the broker could not start, or stopped badly: one typed error per failure, the
//! `io::Error` kept as the source where there is one, and [`StartError::cause`], which `run` and
//! `check` turn into their exit status.

use std::io;
use std::time::Duration;

use super::placement::PlanError;
use super::preflight::PreflightError;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// io_uring or memlock preconditions fail; the message names the fix.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The executor layout cannot be built from `[runtime]` on the CPUs this process may use.
    #[error("runtime placement: {0}")]
    Placement(#[from] PlanError),
    /// The peer table refused the configuration.
    #[error("wireguard: {0}")]
    Peers(#[from] crate::tunnel::PeerTableError),
    /// The stack configuration derived from the config is invalid.
    #[error("netstack: {0}")]
    Stack(#[from] crate::netstack::ConfigError),
    /// The upstream TLS roots or proxy settings are unusable. (A message: `upstream::tls` and
    /// `upstream::proxy` report their errors as text.)
    #[error("upstream: {0}")]
    Upstream(String),
    /// A socket the configuration names (the UDP port, the admin listener) cannot be bound.
    #[error("{what}: {source}")]
    Bind {
        /// The socket and address, e.g. `admin listener 127.0.0.1:9000`.
        what: String,
        source: io::Error,
    },
    /// The system refused a socket or a thread the broker needs, whatever its configuration.
    #[error("{what}: {source}")]
    Os {
        /// What was asked for, e.g. `UDP socket: create`.
        what: String,
        source: io::Error,
    },
    /// A peer's endpoint is an IPv6 address and this host has no IPv6 (the kernel refused an
    /// `AF_INET6` socket with `source`).
    #[error("peer endpoint {endpoint} is an IPv6 address, but this host has no IPv6 ({source})")]
    NoIpv6 { endpoint: String, source: io::Error },
    /// An executor could not be created, or failed before it was running; every other executor
    /// has been stopped.
    #[error("executor {name} could not start: {source}")]
    Executor {
        /// Its thread name (`wgbroker-core`, `wgbroker-tunnel`, `wgbroker-shard<i>`), or the
        /// names of every executor that did not report in time.
        name: String,
        source: ExecutorError,
    },
}

/// Why one executor did not come to run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// glommio could not create it or it failed on its thread: its io_uring rings (`EMFILE`,
    /// `ENOMEM`), its CPU, its thread; or it panicked. glommio's error as an `io::Error` (which
    /// is the kernel's own when there is one).
    #[error("{0}")]
    Os(#[source] io::Error),
    /// Its shard's stacks cannot be built.
    #[error("netstack: {0}")]
    Stack(#[from] crate::netstack::ConfigError),
    /// Its shard's allowlist does not compile (the configuration compiled the same rules: not
    /// expected).
    #[error("allowlist: {} error(s)", .0.len())]
    Allowlist(Vec<crate::allowlist::RuleError>),
    /// It ended before it was running, without saying why.
    #[error("it ended before it was running")]
    Ended,
    /// It did not report that it runs within the start timeout.
    #[error("not running after {} s", .0.as_secs())]
    Late(Duration),
}

impl ExecutorError {
    /// glommio's error, as the `io::Error` it converts to (the kernel's own for an I/O failure).
    pub(super) fn glommio(e: glommio::GlommioError<()>) -> Self {
        Self::Os(io::Error::from(e))
    }
}

/// What a [`StartError`] asks of whoever runs the broker; `run` and `check` turn it into their
/// exit status, and the systemd unit restarts the broker only on [`Cause::Temporary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The configuration, or the environment it reads (`HTTPS_PROXY`), cannot work: a CA file
    /// without a certificate, an unsupported proxy, CPUs this process may not use, peers the
    /// tunnel refuses, an address that needs a privilege. Starting again will not help.
    Config,
    /// The host cannot run the broker (io_uring, the locked-memory limit, an executor that
    /// cannot be created). Starting again will not help either.
    Host,
    /// May pass on its own: an address in use or not assigned (yet), a thread or socket the
    /// system could not create right now.
    Temporary,
}

impl StartError {
    /// Whether this is worth retrying, and whose to fix.
    pub fn cause(&self) -> Cause {
        match self {
            Self::Preflight(_) => Cause::Host,
            Self::Placement(_) | Self::Peers(_) | Self::Stack(_) | Self::Upstream(_) => {
                Cause::Config
            }
            // An address that needs a privilege the broker does not have (a port below 1024).
            Self::Bind { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Cause::Config
            }
            Self::Bind { .. } | Self::Os { .. } => Cause::Temporary,
            // The configuration asks for IPv6 on a host without it.
            Self::NoIpv6 { .. } => Cause::Config,
            // Its rings, its CPU, its stacks: what the host gives this process.
            Self::Executor { .. } => Cause::Host,
        }
    }
}

/// An executor that ended with an error, or panicked, while the broker ran.
#[derive(Debug, thiserror::Error)]
#[error("executor {name} failed: {source}")]
pub struct ExecutorFailed {
    /// Its thread name.
    pub name: String,
    /// glommio's error, as an `io::Error`.
    pub source: io::Error,
}

/// A reload that not every shard applied in time; the shards that did not keep the rules they
/// had (each applies the newest configuration at its next safe point).
#[derive(Debug, thiserror::Error)]
#[error("not every shard applied the new configuration within {} s", .within.as_secs())]
pub struct ReloadTimedOut {
    /// How long the control thread waited.
    pub within: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: io::ErrorKind) -> io::Error {
        io::Error::from(kind)
    }

    #[test]
    fn causes_follow_whose_fix_it_is() {
        let bind = |kind| StartError::Bind {
            what: "UDP socket".into(),
            source: io(kind),
        };
        assert_eq!(bind(io::ErrorKind::AddrInUse).cause(), Cause::Temporary);
        assert_eq!(bind(io::ErrorKind::PermissionDenied).cause(), Cause::Config);
        let os = StartError::Os {
            what: "cannot start a thread".into(),
            source: io(io::ErrorKind::WouldBlock),
        };
        assert_eq!(os.cause(), Cause::Temporary);
        assert_eq!(
            StartError::from(PlanError::NoCpu).cause(),
            Cause::Config,
            "CPUs the process may not use"
        );
        let exec = StartError::Executor {
            name: "wgbroker-core".into(),
            source: ExecutorError::Ended,
        };
        assert_eq!(exec.cause(), Cause::Host);
    }

    #[test]
    fn the_io_error_is_the_source_and_its_text_is_in_the_message() {
        let e = StartError::Executor {
            name: "wgbroker-shard1".into(),
            source: ExecutorError::Os(io::Error::from_raw_os_error(libc::EMFILE)),
        };
        assert!(
            e.to_string()
                .starts_with("executor wgbroker-shard1 could not start: "),
            "{e}"
        );
        assert!(e.to_string().contains("os error 24"), "{e}");
        let inner = std::error::Error::source(&e).expect("the executor's error");
        let io = std::error::Error::source(inner)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("the io::Error");
        assert_eq!(io.raw_os_error(), Some(libc::EMFILE));
    }
}

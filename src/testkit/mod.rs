//! The vendor side, for tests, `demo` and `loadtest`: a WireGuard gateway (the same
//! [`crate::tunnel::PeerTable`], as responder) with its own smoltcp TCP stack
//! ([`crate::netstack::StackSet`] in client mode) and an HTTP/1.1 client, over a plain UDP
//! socket (and, for the stream transport, TCP: [`streams`]). No root, no TUN.
//!
//! Also the WAN in a box: [`impair`] (sans-IO per-datagram delay, jitter, loss, duplication and
//! reordering, seeded), used by the gateway for `loadtest --delay/--loss/...` and by [`relay`],
//! the hidden `wgbroker relay` that `perf/wan.sh` puts between a real wireguard-go and the brokers.

pub mod bulk;
pub mod client;
#[cfg(test)]
pub(crate) mod clock;
pub mod gateway;
pub mod impair;
pub mod listener;
pub mod relay;
pub mod response;
pub mod scm;
#[cfg(test)]
pub(crate) mod script;
mod serve_port;
pub mod streams;
pub mod tls;
pub mod toml;
#[cfg(test)]
pub(crate) mod upstreams;
pub mod webhooks;

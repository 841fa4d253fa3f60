//! The vendor side, for tests, `demo` and `loadtest`: a WireGuard gateway (the same
//! [`crate::tunnel::PeerTable`], as responder) with its own smoltcp TCP stack
//! ([`crate::netstack::StackSet`] in client mode) and an HTTP/1.1 client, over a plain UDP
//! socket. No root, no TUN.

pub mod client;
pub mod gateway;
pub mod impair;
pub mod listener;
pub mod response;
pub mod scm;
#[cfg(test)]
pub(crate) mod script;
pub mod toml;

//! The vendor's side as a product: `wgbroker gateway`, the sans-IO core.
//!
//! A gateway terminates the WireGuard tunnels of many tenants' brokers, several per tenant, and
//! exposes them to the vendor's own services on a front door (HTTP/1.1 on kernel TCP):
//! `METHOD /t/<tenant>/proxy/<absolute URL>` goes to one healthy broker of that tenant as
//! `METHOD /proxy/<absolute URL>`, over a TCP connection inside the tunnel (kept alive for the
//! next request to that broker).
//!
//! This module holds the decisions, without I/O and with time passed in:
//!
//! | module | decides |
//! |---|---|
//! | [`balance`] | which broker serves a request (least outstanding), which are healthy, what is retried |
//! | [`pool`] | which idle keep-alive connections to brokers are kept, how long, which is handed out |
//! | [`route`] | what a front-door request is for: a tenant's proxy, its health, the gateway's own endpoints |
//!
//! The configuration is [`crate::config::gateway`]; the I/O (the front-door listener, the
//! tunnel, the connections to brokers) is the runtime's.

pub mod balance;
pub mod pool;
pub mod route;

use ipnet::IpNet;

use crate::config::gateway::GatewayConfig;
use crate::tunnel::PeerSpec;

/// The WireGuard peers of a gateway: every broker of every tenant, in [`balance::BrokerId`]
/// order, each allowed exactly its own tunnel address (a host route). That is the cryptokey
/// routing that keeps tenants apart: a packet decrypted under broker X's key is accepted only
/// with X's address as its source, and a packet to X's address is encrypted only for X's key.
/// Brokers dial the gateway, so no endpoint is configured: the table learns it.
pub fn peer_specs(config: &GatewayConfig) -> Vec<PeerSpec> {
    config
        .brokers()
        .map(|(_, b)| PeerSpec {
            public_key: b.public_key,
            preshared_key: b
                .preshared_key
                .as_ref()
                .and_then(|k| crate::keys::decode32(k.value.expose()).ok()),
            endpoint: None,
            endpoint_name: None,
            allowed_ips: vec![IpNet::from(b.address)],
            persistent_keepalive: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests;

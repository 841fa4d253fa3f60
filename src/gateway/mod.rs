//! The vendor's side as a product: `wgbroker gateway`, the sans-IO core.
//!
//! A gateway terminates the WireGuard tunnels of many tenants' brokers, several per tenant, and
//! exposes them to the vendor's own services on a front door (HTTP/1.1 on kernel TCP):
//! `METHOD /t/<tenant>/proxy/<absolute URL>` goes to one healthy broker of that tenant as
//! `METHOD /proxy/<absolute URL>`, over a TCP connection the gateway opens inside the tunnel.
//!
//! This module holds the decisions, without I/O and with time passed in:
//!
//! | module | decides |
//! |---|---|
//! | [`balance`] | which broker serves a request (least outstanding), which are healthy, what is retried |
//! | [`route`] | what a front-door request is for: a tenant's proxy, its health, the gateway's own endpoints |
//!
//! The configuration is [`crate::config::gateway`]; the I/O (the front-door listener, the
//! tunnel, the connections to brokers) is the runtime's.

pub mod balance;
pub mod route;

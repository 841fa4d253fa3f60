//! The one integration-test binary: modules per area, one link step.

mod allowlist;
mod bigbody;
mod body;
mod ci_setup;
mod cli;
mod config;
mod dual_stack;
mod gateway;
mod harness;
mod interop;
mod interop_proxy;
mod layout;
mod loadtest;
mod logs;
mod onboard;
mod operations;
mod proxy;
mod relay;
mod reload_all;
mod slow;
mod transport;
mod tunnel;
mod upstream;
mod webhooks;

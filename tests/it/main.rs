//! The one integration-test binary: modules per area, one link step.

mod allowlist;
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
mod operations;
mod proxy;
mod relay;
mod slow;
mod tunnel;
mod upstream;

//! IP packets as they cross the broker: owned buffers that move between cores, and the flow view
//! the tunnel core uses to pick a shard.
//!
//! Invariants:
//! * A [`PacketBuf`] is allocated by a [`BufPool`] and moves by ownership (tunnel core → shard →
//!   back); nothing copies the packet bytes between decryption and smoltcp.
//! * [`Flow::parse`] never panics and never reads past the IP header it validated.

mod buf;
mod flow;

pub use buf::{BufPool, PacketBuf};
pub use flow::{Flow, FlowError, TCP, shard_of};

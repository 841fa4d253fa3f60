//! The packet links between the tunnel core and a shard.
//!
//! Each direction is one bounded lock-free SPSC ring (glommio's `shared_channel`) carrying
//! [`Msg`]: a packet to process, or a spent buffer going home to the core that allocated it. On
//! a one-CPU machine the tunnel core and the shard share an executor and the link is a local
//! channel instead; the code on both ends is the same.

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use crate::packet::PacketBuf;

/// What travels on a link.
#[derive(Debug)]
pub enum Msg {
    /// An IP packet: decrypted (tunnel → shard) or to encrypt (shard → tunnel).
    Packet(PacketBuf),
    /// A buffer the receiver is done with, going back to the pool it came from.
    Home(PacketBuf),
}

/// A link end before it is connected inside its executor.
#[derive(Debug)]
pub enum TxEnd {
    Shared(SharedSender<Msg>),
}

/// A link end before it is connected inside its executor.
#[derive(Debug)]
pub enum RxEnd {
    Shared(SharedReceiver<Msg>),
}

/// A pair of unconnected ends of one direction.
pub fn shared(capacity: usize) -> (TxEnd, RxEnd) {
    let (tx, rx) = shared_channel::new_bounded(capacity);
    (TxEnd::Shared(tx), RxEnd::Shared(rx))
}

impl TxEnd {
    /// Connects the sending end in the current executor.
    pub async fn connect(self) -> Tx {
        match self {
            TxEnd::Shared(s) => Tx::Shared(s.connect().await),
        }
    }
}

impl RxEnd {
    /// Connects the receiving end in the current executor.
    pub async fn connect(self) -> Rx {
        match self {
            RxEnd::Shared(r) => Rx::Shared(r.connect().await),
        }
    }
}

/// A connected sending end.
#[derive(Debug)]
pub enum Tx {
    Shared(ConnectedSender<Msg>),
    Local(LocalSender<Msg>),
}

/// A connected receiving end.
#[derive(Debug)]
pub enum Rx {
    Shared(ConnectedReceiver<Msg>),
    Local(LocalReceiver<Msg>),
}

/// A link inside one executor (one-CPU mode).
pub fn local(capacity: usize) -> (Tx, Rx) {
    let (tx, rx) = local_channel::new_bounded(capacity);
    (Tx::Local(tx), Rx::Local(rx))
}

impl Tx {
    /// Sends without waiting; false when the ring is full or closed (the message is dropped).
    pub fn try_send(&self, m: Msg) -> bool {
        match self {
            Tx::Shared(s) => s.try_send(m).is_ok(),
            Tx::Local(s) => s.try_send(m).is_ok(),
        }
    }

    /// Sends, waiting for room (back-pressure); false when the other end is gone.
    pub async fn send(&self, m: Msg) -> bool {
        match self {
            Tx::Shared(s) => s.send(m).await.is_ok(),
            Tx::Local(s) => s.send(m).await.is_ok(),
        }
    }
}

impl Rx {
    /// The next message; `None` when the sender is gone.
    pub async fn recv(&self) -> Option<Msg> {
        match self {
            Rx::Shared(r) => r.recv().await,
            Rx::Local(r) => r.recv().await,
        }
    }
}

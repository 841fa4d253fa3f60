//! The packet links between the tunnel core and a shard.
//!
//! Each direction is one bounded lock-free SPSC ring (glommio's `shared_channel`) carrying
//! [`Msg`]: a packet to process, or a spent buffer going home to the core that allocated it. On
//! a one-CPU machine the tunnel core and the shard share an executor and the link is a local
//! channel instead; the code on both ends is the same.

use std::time::Duration;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::{GlommioError, ResourceType};

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

    /// Sends without waiting; gives the message back when the ring is full or closed.
    pub fn try_send_or_return(&self, m: Msg) -> Result<(), Msg> {
        let sent = match self {
            Tx::Shared(s) => s.try_send(m),
            Tx::Local(s) => s.try_send(m),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(
                GlommioError::WouldBlock(ResourceType::Channel(m))
                | GlommioError::Closed(ResourceType::Channel(m)),
            ) => Err(m),
            // A channel push fails only in the two ways above; no other error carries the
            // message back.
            Err(_) => Ok(()),
        }
    }

    /// Sends, waiting for room (back-pressure); false when the other end is gone.
    pub async fn send(&self, m: Msg) -> bool {
        match self {
            Tx::Shared(s) => s.send(m).await.is_ok(),
            Tx::Local(s) => s.send(m).await.is_ok(),
        }
    }

    /// Sends, waiting at most `limit` for room; false (the message dropped) when the ring stayed
    /// full that long or the other end is gone. With room it sends at once: the timer is only
    /// armed if the send has to wait.
    pub async fn send_within(&self, m: Msg, limit: Duration) -> bool {
        futures_lite::future::or(self.send(m), async {
            glommio::timer::sleep(limit).await;
            false
        })
        .await
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

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::Instant;

    use super::*;
    use crate::packet::BufPool;

    #[test]
    fn send_within_sends_at_once_waits_for_room_and_gives_up_at_the_limit() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor");
        ex.run(async {
            let mut pool = BufPool::new(64, 8);
            let (tx, rx) = local(1);
            let rx = Rc::new(rx);
            let long = Duration::from_secs(5);
            assert!(tx.send_within(Msg::Home(pool.take()), long).await, "room");
            let back = tx.try_send_or_return(Msg::Home(pool.take()));
            assert!(
                matches!(back, Err(Msg::Home(_))),
                "full: the message comes back"
            );

            // Full, and nobody takes anything: dropped after the limit.
            let t0 = Instant::now();
            let limit = Duration::from_millis(20);
            assert!(!tx.send_within(Msg::Home(pool.take()), limit).await);
            assert!(t0.elapsed() >= limit, "{:?}", t0.elapsed());

            // Full, and the receiver takes one after 5 ms: sent, well before the limit.
            let r = rx.clone();
            let drain = glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(5)).await;
                r.recv().await.is_some()
            });
            let t0 = Instant::now();
            assert!(tx.send_within(Msg::Home(pool.take()), long).await);
            assert!(t0.elapsed() < long);
            assert!(drain.await);
            assert!(
                matches!(rx.recv().await, Some(Msg::Home(_))),
                "the late one arrived"
            );

            // The other end gone: false at once.
            drop(rx);
            let t0 = Instant::now();
            assert!(!tx.send_within(Msg::Home(pool.take()), long).await);
            assert!(t0.elapsed() < long);
        });
    }
}

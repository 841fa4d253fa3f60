//! The gateway's connections through the tunnel: opening one to a broker (retried when
//! refused, bounded by `connect_timeout`, abandoned when the broker leaves rotation) and
//! [`TunnelConn`], the async byte stream over a netstack connection.

use super::*;

/// Opens a connection to broker `id` through the tunnel; fails when it is not established
/// within `connect_timeout` or, with `watch` (requests, not health checks, which decide
/// rotation), when the broker leaves rotation meanwhile.
pub(super) async fn open(gw: &Rc<Gw>, id: BrokerId, watch: bool) -> io::Result<TunnelConn> {
    let timeout = gw.config.gateway.connect_timeout;
    let attempts = async {
        // A refused SYN is retried at once from the next port: with a connection per request
        // the broker still holds recent ports of ours in TIME-WAIT and resets a SYN that lands
        // on one (about 1.6 % of connections at 6,000 req/s on loopback).
        let mut refused = 0;
        loop {
            match open_once(gw, id).await {
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && refused < REFUSED_RETRIES =>
                {
                    refused += 1;
                }
                r => return r,
            }
        }
    };
    future::or(
        attempts,
        future::or(
            async {
                glommio::timer::sleep(timeout).await;
                Err(io::ErrorKind::TimedOut.into())
            },
            async {
                if watch {
                    left_rotation(gw, id).await;
                } else {
                    future::pending::<()>().await;
                }
                Err(io::Error::other("broker left rotation"))
            },
        ),
    )
    .await
}

/// How many refused connection attempts [`open`] retries at once.
const REFUSED_RETRIES: u32 = 8;

/// One connection attempt to broker `id`: until established or refused (no timeout here).
async fn open_once(gw: &Rc<Gw>, id: BrokerId) -> io::Result<TunnelConn> {
    let addr = gw
        .broker_addr(id)
        .ok_or_else(|| io::Error::other("no such broker"))?;
    let conn_id = gw
        .set
        .borrow_mut()
        .connect(addr)
        .map_err(|e| io::Error::other(e.to_string()))?;
    gw.kick();
    let conn = stream(gw.clone(), conn_id);
    future::poll_fn(|cx| {
        let mut set = gw.set.borrow_mut();
        match set.state(conn_id) {
            State::Established => Poll::Ready(Ok(())),
            State::SynSent | State::SynReceived => {
                match set.register_send_waker(conn_id, cx.waker()) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(io::Error::other(e.to_string()))),
                }
            }
            other => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("connection {other}"),
            ))),
        }
    })
    .await?;
    Ok(conn)
}

/// Resolves once broker `id` is out of rotation (a connection not yet open to it is given up).
pub(super) async fn left_rotation(gw: &Gw, id: BrokerId) {
    while gw.bal.borrow().healthy(id) {
        glommio::timer::sleep(WATCH_INTERVAL).await;
    }
}

/// Resolves once broker `id` is out of rotation for a reason other than a reload removing it:
/// a removed broker drains, so a request already sent to it is left to finish there (within
/// `response_timeout`), not cut off and sent again elsewhere.
pub(super) async fn died(gw: &Gw, id: BrokerId) {
    loop {
        {
            let bal = gw.bal.borrow();
            if !bal.healthy(id) && !bal.is_draining(id) {
                return;
            }
        }
        glommio::timer::sleep(WATCH_INTERVAL).await;
    }
}

/// A tunnel TCP connection of the gateway as an async byte stream; dropped unfinished, it is
/// reset, so that the broker does not wait on it.
pub(super) type TunnelConn = crate::runtime::tunnel_stream::TunnelStream<Gw>;

impl crate::runtime::tunnel_stream::OwnsSet for Gw {
    fn set(&self) -> &std::cell::RefCell<crate::netstack::StackSet> {
        &self.set
    }
}

/// The stream over netstack connection `id` (opened by [`open`], or accepted by the heartbeat
/// responder).
pub(super) fn stream(gw: Rc<Gw>, id: ConnId) -> TunnelConn {
    TunnelConn::new(gw, id, crate::runtime::tunnel_stream::OnDrop::Abort)
}

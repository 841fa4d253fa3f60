//! The gateway's side of the brokers' stream transports ([`crate::transport`]): the framed TCP
//! stream on the WireGuard port and, with `[gateway] tls_listen`, the same inside TLS. Each
//! connection's datagrams enter the peer table as if from the connection's address (the table's
//! roaming sends the broker's traffic back down it), so a broker keeps its session whichever
//! transport it moves to.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, future};
use glommio::net::TcpListener;

use super::{GatewayStartError, Gw, handle_datagram};
use crate::runtime::stream::{StreamOut, spawn_writer};
use crate::transport::frame::FrameDecoder;
use crate::tunnel::required_buffer_len;

/// `[gateway] tls_listen` bound, with the server configuration of `tls_cert`/`tls_key` and the
/// address bound; `None` when TLS is not offered.
pub(super) fn tls_listener(
    g: &crate::config::gateway::Gateway,
) -> Result<Option<(socket2::Socket, Arc<rustls::ServerConfig>, SocketAddr)>, GatewayStartError> {
    Ok(match (g.tls_listen, &g.tls_cert, &g.tls_key) {
        (Some(addr), Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| {
                    GatewayStartError::TlsCertificate(format!("cannot read {}: {e}", p.display()))
                })
            };
            let config = crate::transport::tls::server_config_from_pem(&read(cert)?, &read(key)?)
                .map_err(GatewayStartError::TlsCertificate)?;
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|source| GatewayStartError::TlsListen { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| GatewayStartError::TlsListen { addr, source })?;
            Some((socket2::Socket::from(listener), config, bound))
        }
        _ => None,
    })
}

/// Most stream transport connections held at once (brokers reconnect after a close).
const MAX_STREAMS: usize = 4096;

/// How long a broker's TLS handshake on `tls_listen` may take.
const TLS_ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts brokers' stream transport connections ([`crate::transport`]) until stopped: the
/// framed TCP stream, or with `tls` the same inside TLS.
pub(super) async fn stream_accept_loop(
    gw: Rc<Gw>,
    listener: TcpListener,
    tls: Option<futures_rustls::TlsAcceptor>,
) {
    while !gw.stopped() {
        let tcp = match listener.accept().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(event = "gateway.stream_accept_error", error = %e);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(addr) = tcp.peer_addr() else { continue };
        let addr = crate::runtime::udp::canonical(addr);
        if gw.streams.borrow().len() >= MAX_STREAMS {
            continue;
        }
        let _ = tcp.set_nodelay(true);
        match &tls {
            None => {
                glommio::spawn_local(stream_conn(gw.clone(), tcp, addr)).detach();
            }
            Some(acceptor) => {
                let (gw, acceptor) = (gw.clone(), acceptor.clone());
                glommio::spawn_local(async move {
                    let handshake = future::or(async { Some(acceptor.accept(tcp).await) }, async {
                        glommio::timer::sleep(TLS_ACCEPT_TIMEOUT).await;
                        None
                    });
                    match handshake.await {
                        Some(Ok(s)) => stream_conn(gw, s, addr).await,
                        Some(Err(e)) => {
                            tracing::debug!(event = "gateway.stream_tls_error", %addr, error = %e)
                        }
                        None => tracing::debug!(event = "gateway.stream_tls_timeout", %addr),
                    }
                })
                .detach();
            }
        }
    }
}

/// One broker's stream (TCP, or TLS over it): its datagrams go into the peer table as if from
/// `addr` (the table's roaming then sends the broker's traffic back here), until EOF, an error
/// or a framing error.
async fn stream_conn<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    gw: Rc<Gw>,
    stream: S,
    addr: SocketAddr,
) {
    let (mut rd, wr) = futures_lite::io::split(stream);
    let out = Rc::new(StreamOut::default());
    gw.streams.borrow_mut().insert(addr, out.clone());
    let writer = spawn_writer(out.clone(), wr);
    let capacity = gw.pool.borrow().buf_capacity();
    let mut dec = FrameDecoder::new(capacity);
    let mut frame = Vec::with_capacity(capacity);
    let mut scratch = vec![0u8; required_buffer_len(capacity)];
    'conn: while !gw.stopped() && !out.is_closed() {
        match rd.read(dec.space()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => dec.filled(n),
        }
        loop {
            match dec.next_frame() {
                Ok(Some(d)) => {
                    frame.clear();
                    frame.extend_from_slice(d);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(event = "gateway.stream_framing_error", %addr, error = %e);
                    break 'conn;
                }
            }
            handle_datagram(&gw, addr, &frame, &mut scratch).await;
        }
    }
    gw.streams.borrow_mut().remove(&addr);
    out.close();
    drop(writer);
}

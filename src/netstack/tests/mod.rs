//! End-to-end tests of the stack set against a plain smoltcp peer (the vendor side), moving
//! packets under a fake clock. Each test names the property it proves: `lifecycle` covers how
//! sockets are born, accepted, refused and reaped; `traffic` covers what flows over them.

mod harness;
mod lifecycle;
mod traffic;

use std::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::wire::TcpControl;

use super::ConnId;
use harness::{Net, PEER_V4, tcp_repr};

pub(super) const MS: Duration = Duration::from_millis(1);

/// Connects `n` peer sockets (local ports from 40000) and runs until the broker accepted all.
pub(super) fn open(net: &mut Net, n: u16, buffer: usize) -> Vec<(SocketHandle, ConnId)> {
    open_from(net, 40000, n, buffer)
}

/// [`open`] with local ports from `first`.
pub(super) fn open_from(
    net: &mut Net,
    first: u16,
    n: u16,
    buffer: usize,
) -> Vec<(SocketHandle, ConnId)> {
    let remote = net.broker_addr(80);
    let handles: Vec<SocketHandle> = (0..n)
        .map(|i| net.peer.connect(remote, first + i, buffer))
        .collect();
    let mut ids = Vec::new();
    net.run_until(200, |net| {
        while let Some(id) = net.broker.accept() {
            ids.push(id);
        }
        ids.len() == usize::from(n)
    });
    // Pair each broker connection with its peer socket by the peer's port.
    let mut pairs: Vec<(SocketHandle, ConnId)> = ids
        .into_iter()
        .map(|id| {
            let port = net.broker.remote_addr(id).expect("connected").port();
            (handles[usize::from(port - first)], id)
        })
        .collect();
    pairs.sort_by_key(|(_, id)| net.broker.remote_addr(*id).map(|a| a.port()));
    pairs
}

/// Reads everything the broker has for `id` into `out`; returns bytes read.
pub(super) fn broker_read(net: &mut Net, id: ConnId, out: &mut Vec<u8>) -> usize {
    let mut buf = [0u8; 8192];
    let mut total = 0;
    while let Ok(n) = net.broker.recv_slice(id, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        total += n;
    }
    total
}

pub(super) fn peer_read(net: &mut Net, h: SocketHandle, out: &mut Vec<u8>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = net.peer.socket(h).recv_slice(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

pub(super) fn synack_of(packets: &[Vec<u8>]) -> smoltcp::wire::TcpRepr<'_> {
    packets
        .iter()
        .filter_map(|p| tcp_repr(p))
        .find(|r| r.control == TcpControl::Syn && r.ack_number.is_some())
        .expect("the broker sent a SYN-ACK")
}

/// An IPv4 packet with a TCP header (checksums left zero).
pub(super) fn ipv4_tcp(dst: [u8; 4], protocol: u8, dst_port: u16, flags: u8, frag: u16) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = protocol;
    p[12..16].copy_from_slice(&PEER_V4);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&dst_port.to_be_bytes());
    p[32] = 0x50;
    p[33] = flags;
    p
}

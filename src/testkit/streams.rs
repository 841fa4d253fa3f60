//! The test kit gateway's accepting side of the stream transport ([`crate::transport`]): a TCP
//! listener on the gateway's UDP port, and the framed connections brokers open to it.
//!
//! Every datagram read off a connection goes into the gateway's one peer table as if it had come
//! from the connection's remote address; once the table has authenticated it there (WireGuard
//! roaming), what the table sends to that address goes back down the connection. So a broker can
//! move between UDP and TCP without losing its session: the table follows the last authenticated
//! packet, whatever carried it.
//!
//! Everything is non-blocking and bounded: a connection's receive buffer is one
//! [`FrameDecoder`], its send queue at most [`MAX_QUEUED`] bytes (datagrams beyond it are
//! dropped, as by a full UDP socket), and a framing error, EOF or I/O error closes it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::io::RawFd;

use crate::runtime::udp::Ready;
use crate::transport::frame::{self, FrameDecoder};

/// Most framed bytes queued for one connection.
pub const MAX_QUEUED: usize = 4 << 20;

/// Most bytes read from one connection per [`Streams::read`] (the others get their turn).
const READ_BUDGET: usize = 256 << 10;

/// Most connections held; further ones are closed at once.
const MAX_CONNS: usize = 64;

/// Counters of the stream side.
#[derive(Debug, Default, Clone)]
pub struct StreamStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed for a framing error.
    pub framing_errors: u64,
    /// Datagrams read off connections.
    pub frames_in: u64,
    /// Datagrams queued onto connections.
    pub frames_out: u64,
    /// Datagrams dropped because a connection's queue was full.
    pub queue_drops: u64,
}

#[derive(Debug)]
struct Conn {
    tcp: TcpStream,
    addr: SocketAddr,
    dec: FrameDecoder,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
}

/// The listener and the open connections.
#[derive(Debug)]
pub struct Streams {
    listener: TcpListener,
    conns: Vec<Conn>,
    max_frame: usize,
    pub stats: StreamStats,
}

impl Streams {
    /// Listens on `addr` (TCP), accepting datagrams of up to `max_frame` bytes.
    pub fn bind(addr: SocketAddr, max_frame: usize) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            conns: Vec::new(),
            max_frame,
            stats: StreamStats::default(),
        })
    }

    /// The listening address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// The descriptors to wait on: the listener, every connection for reading, and those with
    /// queued bytes for writing.
    pub fn poll_fds(&self, fds: &mut Vec<(RawFd, Ready)>) {
        fds.push((self.listener.as_raw_fd(), Ready::Readable));
        for c in &self.conns {
            fds.push((c.tcp.as_raw_fd(), Ready::Readable));
            if c.written < c.out.len() {
                fds.push((c.tcp.as_raw_fd(), Ready::Writable));
            }
        }
    }

    /// Closes every connection.
    pub fn close_all(&mut self) {
        self.conns.clear();
    }

    /// Whether `to` is one of the connections (a datagram for it goes down the stream).
    pub fn owns(&self, to: SocketAddr) -> bool {
        self.conns.iter().any(|c| c.addr == to)
    }

    /// Accepts what is pending, reads what every connection has (up to a budget each) and
    /// appends the datagrams, with the connection's address, to `frames`. Connections that end
    /// or break the framing are closed.
    pub fn read(&mut self, frames: &mut Vec<(SocketAddr, Vec<u8>)>) {
        loop {
            match self.listener.accept() {
                Ok((tcp, addr)) => {
                    if self.conns.len() >= MAX_CONNS || tcp.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = tcp.set_nodelay(true);
                    self.stats.accepted += 1;
                    self.conns.push(Conn {
                        tcp,
                        addr: crate::runtime::udp::canonical(addr),
                        dec: FrameDecoder::new(self.max_frame),
                        out: Vec::new(),
                        written: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let stats = &mut self.stats;
        self.conns.retain_mut(|c| {
            let mut budget = READ_BUDGET;
            while budget > 0 {
                match c.tcp.read(c.dec.space()) {
                    Ok(0) => return false,
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        c.dec.filled(n);
                        loop {
                            match c.dec.next_frame() {
                                Ok(Some(d)) => {
                                    stats.frames_in += 1;
                                    frames.push((c.addr, d.to_vec()));
                                }
                                Ok(None) => break,
                                Err(_) => {
                                    stats.framing_errors += 1;
                                    return false;
                                }
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            true
        });
    }

    /// Queues `datagram` for the connection at `to`; `false` when there is none. A full queue
    /// drops it (counted).
    pub fn queue(&mut self, to: SocketAddr, datagram: &[u8]) -> bool {
        let Some(c) = self.conns.iter_mut().find(|c| c.addr == to) else {
            return false;
        };
        if c.out.len() - c.written + frame::PREFIX + datagram.len() > MAX_QUEUED
            || frame::encode(datagram, &mut c.out).is_err()
        {
            self.stats.queue_drops += 1;
        } else {
            self.stats.frames_out += 1;
        }
        true
    }

    /// Writes what the connections can take now; closes those that fail.
    pub fn write(&mut self) {
        self.conns.retain_mut(|c| {
            while c.written < c.out.len() {
                match c.tcp.write(&c.out[c.written..]) {
                    Ok(0) => return false,
                    Ok(n) => c.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            if c.written == c.out.len() {
                c.out.clear();
                c.written = 0;
            } else if c.written > MAX_QUEUED / 2 {
                c.out.drain(..c.written);
                c.written = 0;
            }
            true
        });
    }
}

//! The test kit gateway's accepting side of the stream transport ([`crate::transport`]): a TCP
//! listener on the gateway's UDP port, optionally a TLS listener ([`Streams::listen_tls`], the
//! `tls` transport: the same framing inside TLS), and the framed connections brokers open to
//! them.
//!
//! Every datagram read off a connection goes into the gateway's one peer table as if it had come
//! from the connection's remote address; once the table has authenticated it there (WireGuard
//! roaming), what the table sends to that address goes back down the connection. So a broker can
//! move between UDP and TCP without losing its session: the table follows the last authenticated
//! packet, whatever carried it.
//!
//! Everything is non-blocking and bounded: a connection's receive buffer is one
//! [`FrameDecoder`], its send queue at most [`MAX_QUEUED`] bytes (datagrams beyond it are
//! dropped, as by a full UDP socket), and a framing error, EOF or I/O error closes it. A TLS
//! connection adds rustls's own bounded buffers (its default limit on unsent data); a TLS error
//! closes it too (counted).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::io::RawFd;
use std::sync::Arc;

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
    /// Of `accepted`, the TLS connections.
    pub tls_accepted: u64,
    /// TLS connections closed for a TLS error (a handshake the client refused or hung up on, a
    /// bad record).
    pub tls_errors: u64,
}

#[derive(Debug)]
struct Conn {
    tcp: TcpStream,
    addr: SocketAddr,
    /// The TLS session of a connection to the TLS listener.
    tls: Option<Box<rustls::ServerConnection>>,
    dec: FrameDecoder,
    out: Vec<u8>,
    /// Bytes of `out` already written (to the socket, or into the TLS session).
    written: usize,
}

impl Conn {
    /// Whether the socket has bytes waiting to go out.
    fn wants_write(&self) -> bool {
        self.written < self.out.len() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes what the socket takes now: queued frames (through the TLS session, if any) and
    /// the session's own records. `false`: the connection broke.
    fn flush(&mut self) -> bool {
        if let Some(tls) = self.tls.as_mut() {
            while self.written < self.out.len() {
                match tls.writer().write(&self.out[self.written..]) {
                    Ok(0) => break,
                    Ok(n) => self.written += n,
                    Err(_) => return false,
                }
            }
            while tls.wants_write() {
                match tls.write_tls(&mut self.tcp) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
        } else {
            while self.written < self.out.len() {
                match self.tcp.write(&self.out[self.written..]) {
                    Ok(0) => return false,
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written > MAX_QUEUED / 2 {
            self.out.drain(..self.written);
            self.written = 0;
        }
        true
    }

    /// Reads what the connection has (up to [`READ_BUDGET`] bytes) and appends its datagrams
    /// to `frames`. `false`: EOF, an error, a TLS error or a framing error (counted).
    fn read(&mut self, frames: &mut Vec<(SocketAddr, Vec<u8>)>, stats: &mut StreamStats) -> bool {
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let n = match self.tls.as_mut() {
                None => self.tcp.read(self.dec.space()),
                Some(tls) => tls.read_tls(&mut self.tcp),
            };
            let n = match n {
                Ok(0) => {
                    if self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                        // The client hung up on the handshake (its certificate check failed).
                        stats.tls_errors += 1;
                    }
                    return false;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            budget = budget.saturating_sub(n);
            if let Some(tls) = self.tls.as_mut() {
                if tls.process_new_packets().is_err() {
                    stats.tls_errors += 1;
                    // Send the alert rustls queued, if the socket takes it.
                    let _ = tls.write_tls(&mut self.tcp);
                    return false;
                }
                loop {
                    match tls.reader().read(self.dec.space()) {
                        // The client's close_notify.
                        Ok(0) => return false,
                        Ok(n) => {
                            self.dec.filled(n);
                            if !take_frames(&mut self.dec, self.addr, frames, stats) {
                                return false;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => return false,
                    }
                }
            } else {
                self.dec.filled(n);
                if !take_frames(&mut self.dec, self.addr, frames, stats) {
                    return false;
                }
            }
        }
        // A TLS handshake in progress has answers to send.
        self.flush()
    }
}

/// Hands out the whole datagrams `dec` decoded so far, as from `addr`; `false` on a framing
/// error (counted).
fn take_frames(
    dec: &mut FrameDecoder,
    addr: SocketAddr,
    frames: &mut Vec<(SocketAddr, Vec<u8>)>,
    stats: &mut StreamStats,
) -> bool {
    loop {
        match dec.next_frame() {
            Ok(Some(d)) => {
                stats.frames_in += 1;
                frames.push((addr, d.to_vec()));
            }
            Ok(None) => return true,
            Err(_) => {
                stats.framing_errors += 1;
                return false;
            }
        }
    }
}

/// The listeners and the open connections.
#[derive(Debug)]
pub struct Streams {
    listener: TcpListener,
    /// The `tls` transport's listener and the gateway's certificate ([`Streams::listen_tls`]).
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
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
            tls: None,
            conns: Vec::new(),
            max_frame,
            stats: StreamStats::default(),
        })
    }

    /// Also accepts the `tls` transport on `addr` (TCP), with `config`'s certificate; returns the
    /// address bound.
    pub fn listen_tls(
        &mut self,
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        self.tls = Some((listener, config));
        Ok(bound)
    }

    /// The listening address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The TLS listener's address, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// The descriptors to wait on: the listener, every connection for reading, and those with
    /// queued bytes for writing.
    pub fn poll_fds(&self, fds: &mut Vec<(RawFd, Ready)>) {
        fds.push((self.listener.as_raw_fd(), Ready::Readable));
        if let Some((l, _)) = &self.tls {
            fds.push((l.as_raw_fd(), Ready::Readable));
        }
        for c in &self.conns {
            fds.push((c.tcp.as_raw_fd(), Ready::Readable));
            if c.wants_write() {
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
    /// or break the framing (or TLS) are closed.
    pub fn read(&mut self, frames: &mut Vec<(SocketAddr, Vec<u8>)>) {
        self.accept(false);
        self.accept(true);
        let stats = &mut self.stats;
        self.conns.retain_mut(|c| c.read(frames, stats));
    }

    /// Accepts the connections pending on the plain (`tls` false) or the TLS listener.
    fn accept(&mut self, tls: bool) {
        let (listener, config) = match (tls, &self.tls) {
            (false, _) => (&self.listener, None),
            (true, Some((l, c))) => (l, Some(c)),
            (true, None) => return,
        };
        loop {
            match listener.accept() {
                Ok((tcp, addr)) => {
                    if self.conns.len() >= MAX_CONNS || tcp.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let session = match config.map(|c| rustls::ServerConnection::new(c.clone())) {
                        None => None,
                        Some(Ok(s)) => Some(Box::new(s)),
                        Some(Err(_)) => {
                            self.stats.tls_errors += 1;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    self.stats.accepted += 1;
                    if session.is_some() {
                        self.stats.tls_accepted += 1;
                    }
                    self.conns.push(Conn {
                        tcp,
                        addr: crate::runtime::udp::canonical(addr),
                        tls: session,
                        dec: FrameDecoder::new(self.max_frame),
                        out: Vec::new(),
                        written: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
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
        self.conns.retain_mut(Conn::flush);
    }
}

//! A loopback TCP server, thread per connection: the accept loop the test kit's fixtures share
//! ([`MockScm`](crate::testkit::scm::MockScm) and the load test's upstream). Std only; fixtures,
//! not the data plane.
//!
//! Invariants:
//! * at most `max_connections` handlers run at once; a connection over the cap is closed at
//!   accept (the client sees EOF or a reset), never queued;
//! * dropping the [`Listener`] stops the accept loop (it wakes the loop with one connection of
//!   its own); handlers already running finish on their own.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

/// A running accept loop; stops accepting when dropped.
#[derive(Debug)]
pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Binds `127.0.0.1:0` and serves each connection with `handler` on its own thread (named
    /// `{name}-c`; the accept loop is `{name}`), at most `max_connections` at once.
    pub fn start<F>(name: &str, max_connections: usize, handler: F) -> io::Result<Self>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let conn_name = format!("{name}-c");
        let stopped = stop.clone();
        thread::Builder::new().name(name.into()).spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if open.fetch_add(1, Ordering::Relaxed) >= max_connections {
                    open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let (open2, handler2) = (open.clone(), handler.clone());
                let spawned = thread::Builder::new()
                    .name(conn_name.clone())
                    .spawn(move || {
                        handler2(conn);
                        open2.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    open.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })?;
        Ok(Self { addr, stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so that the loop sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::mpsc;
    use std::time::Duration;

    fn echo_once(mut c: TcpStream) {
        let mut b = [0u8; 16];
        if let Ok(n) = c.read(&mut b) {
            let _ = c.write_all(&b[..n]);
        }
    }

    #[test]
    fn serves_each_connection_on_its_own_thread() {
        let l = Listener::start("t-echo", 8, echo_once).expect("bind");
        let mut clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(l.addr()).expect("connect"))
            .collect();
        // Three handlers are blocked in read at once: each answers only its own client.
        for (i, c) in clients.iter_mut().enumerate().rev() {
            c.write_all(&[b'a' + i as u8]).expect("write");
            let mut one = [0u8; 1];
            c.read_exact(&mut one).expect("echo");
            assert_eq!(one[0], b'a' + i as u8);
        }
    }

    #[test]
    fn connections_over_the_cap_are_closed_at_accept() {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let l = Listener::start("t-cap", 1, move |mut c: TcpStream| {
            let _ = release_rx
                .lock()
                .map(|r| r.recv_timeout(Duration::from_secs(10)));
            let _ = c.write_all(b"x");
        })
        .expect("bind");
        // The accept loop takes connections in order and counts the first before it looks at
        // the second, so no pause is needed between them.
        let mut first = TcpStream::connect(l.addr()).expect("connect");
        let mut second = TcpStream::connect(l.addr()).expect("connect");
        second
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        // Over the cap: closed at once, without an answer (served, it would block in the handler
        // and the read would time out instead).
        assert_eq!(second.read(&mut buf).expect("EOF, not a timeout"), 0);
        release_tx.send(()).expect("handler waits");
        first.read_exact(&mut buf).expect("the first is served");
        assert_eq!(&buf, b"x");
    }

    #[test]
    fn dropping_stops_accepting() {
        let l = Listener::start("t-stop", 8, echo_once).expect("bind");
        let addr = l.addr();
        drop(l);
        // Refused once the loop has closed its socket; if the kernel completes the connection
        // first, it sits in the backlog of a loop that no longer accepts: never answered.
        match TcpStream::connect(addr) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                c.write_all(b"q").ok();
                let mut b = [0u8; 1];
                assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
            }
        }
    }
}

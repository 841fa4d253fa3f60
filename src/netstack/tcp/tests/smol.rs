//! smoltcp 0.14's TCP socket as a simulator endpoint, configured as the broker configures it
//! today (`netstack::stack`: CUBIC, no Nagle, 5 ms ACK delay, 256 KiB buffers as in the
//! bulk tuning profile), so a scenario can run against today's behaviour.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use super::sim::Endpoint;

#[derive(Debug, Default)]
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0u8; len];
        let r = f(&mut v);
        self.0.push_back(v);
        r
    }
}

impl phy::Device for Queue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// One smoltcp interface with one TCP socket.
pub struct SmolEnd {
    iface: Interface,
    dev: Queue,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    epoch: Instant,
}

impl SmolEnd {
    fn build(epoch: Instant, local: SocketAddr, buffer: usize, seed: u64) -> Self {
        let mut dev = Queue {
            mtu: 1320,
            ..Queue::default()
        };
        let mut config = IfaceConfig::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut dev, SmolInstant::ZERO);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::from(local.ip()), 24));
        });
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; buffer]),
            tcp::SocketBuffer::new(vec![0u8; buffer]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(Some(SmolDuration::from_millis(5)));
        s.set_congestion_control(CongestionControl::Cubic);
        let mut sockets = SocketSet::new(Vec::new());
        let handle = sockets.add(s);
        Self {
            iface,
            dev,
            sockets,
            handle,
            epoch,
        }
    }

    /// A client connecting from `local` to `remote`.
    pub fn client(epoch: Instant, local: SocketAddr, remote: SocketAddr, buffer: usize) -> Self {
        let mut e = Self::build(epoch, local, buffer, 0x5eed);
        let cx = e.iface.context();
        let s = e.sockets.get_mut::<tcp::Socket<'static>>(e.handle);
        s.connect(cx, IpEndpoint::from(remote), local.port())
            .expect("valid endpoints");
        e
    }

    fn stamp(&self, now: Instant) -> SmolInstant {
        SmolInstant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'static>>(self.handle)
    }

    fn state(&self) -> State {
        self.sockets
            .get::<tcp::Socket<'static>>(self.handle)
            .state()
    }
}

impl Endpoint for SmolEnd {
    fn ingest(&mut self, now: Instant, packet: &[u8]) {
        self.dev.rx.push_back(packet.to_vec());
        let t = self.stamp(now);
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
    }

    fn transmit(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let t = self.stamp(now);
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        out.extend(self.dev.tx.drain(..));
    }

    fn next_timeout(&mut self, now: Instant) -> Option<Instant> {
        let t = self.stamp(now);
        let at = self.iface.poll_at(t, &self.sockets)?;
        Some(self.epoch + Duration::from_micros(at.total_micros().max(0) as u64))
    }

    fn on_timeout(&mut self, now: Instant) {
        let t = self.stamp(now);
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
    }

    fn send(&mut self, data: &[u8]) -> usize {
        self.socket().send_slice(data).unwrap_or(0)
    }

    fn send_capacity(&mut self) -> usize {
        let s = self.socket();
        s.send_capacity() - s.send_queue()
    }

    fn recv(&mut self, _now: Instant, buf: &mut [u8]) -> Option<usize> {
        match self.socket().recv_slice(buf) {
            Ok(n) => Some(n),
            Err(tcp::RecvError::Finished) => None,
            Err(e) => panic!("smoltcp recv: {e:?}"),
        }
    }

    fn close(&mut self) {
        self.socket().close();
    }

    fn is_established(&self) -> bool {
        !matches!(
            self.state(),
            State::Closed | State::Listen | State::SynSent | State::SynReceived
        )
    }

    fn is_closed(&self) -> bool {
        matches!(self.state(), State::Closed | State::TimeWait)
    }
}

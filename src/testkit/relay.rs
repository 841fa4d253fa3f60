//! `wgbroker relay` (hidden; the measuring tool of `perf/wan.sh`): a UDP relay that delays,
//! drops, duplicates and reorders each datagram, for kernels without netem.
//!
//! A *pipe* joins two UDP peers through two sockets of the relay: datagrams that peer A sends to
//! socket `a` leave socket `b` for peer B, and the other way round. Each direction runs on its own
//! thread with its own [`Impair`] queue (its own seed stream), so loss in one direction does not
//! shift the pattern of the other; the same direction of every pipe draws the same stream, so
//! the sides `perf/wan.sh` compares meet the same losses datagram for datagram. Datagrams from any other source are dropped and counted
//! (`foreign`): nothing but the two peers crosses a pipe. Several pipes (one per broker under
//! test) share the options.
//!
//! Each thread drains its socket with `recvmmsg`, queues the datagrams, sends those due with
//! `sendmmsg` (GSO where the kernel has it) and sleeps in `ppoll` until a datagram comes or the
//! next one is due (`runtime::udp`, the same batches as the broker and the test kit's gateway):
//! at ~100k datagrams/s one thread per direction keeps up, and a datagram leaves within tens of
//! microseconds of its due time (measured and printed: `late_*`).
//!
//! It ends on SIGTERM/SIGINT or after `--max-time`, and prints one line per direction:
//!
//! ```text
//! relay pipe=wgbroker dir=a>b offered=7512 delivered=7437 forwarded=7437 lost=75 lost_pct=0.998 ...
//! ```
//!
//! `lost` is the asked-for random loss only; `overflow` (the queue limit), `send_failed` (the
//! kernel refused or the send buffer stayed full for 10 ms), `foreign` and `truncated` are other
//! drops, each counted apart so that a run can show that its loss was exactly what it asked for.

use std::io::{self, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::runtime::udp::{self, Ready, RecvBatch, SendBatch, Unsent};
use crate::testkit::impair::{self, Impair, ImpairSpec, ImpairStats};
use crate::units::{parse_duration, parse_size};

/// Most pipes in one relay.
pub const MAX_PIPES: usize = 16;
/// Largest datagram relayed whole (a jumbo frame); longer ones are dropped as `truncated`.
const SLOT: usize = 9216;
/// Longest sleep: how often a thread looks at the stop flag when nothing happens.
const IDLE: Duration = Duration::from_millis(50);
/// Most idle buffers a direction keeps for reuse.
const SPARE: usize = 8192;

/// Two UDP peers joined through the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipe {
    /// Names the pipe in the counters.
    pub name: String,
    /// The relay's socket that peer A talks to, and peer A.
    pub a_bind: SocketAddr,
    pub a_peer: SocketAddr,
    /// The relay's socket that peer B talks to, and peer B.
    pub b_bind: SocketAddr,
    pub b_peer: SocketAddr,
}

/// `[NAME=]A_BIND,A_PEER,B_BIND,B_PEER` (socket addresses; the name defaults to `pipeN`).
pub fn parse_pipe(s: &str) -> Result<Pipe, String> {
    let (name, rest) = match s.split_once('=') {
        Some((n, r)) => (n.trim(), r),
        None => ("", s),
    };
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("pipe name {name:?}: letters, digits, - and _ only"));
    }
    let addrs: Vec<&str> = rest.split(',').map(str::trim).collect();
    let [a_bind, a_peer, b_bind, b_peer] = addrs[..] else {
        return Err(format!(
            "{s:?}: expected [NAME=]A_BIND,A_PEER,B_BIND,B_PEER (four socket addresses)"
        ));
    };
    let addr = |x: &str| {
        x.parse::<SocketAddr>()
            .map_err(|_| format!("{x:?} is not a socket address (e.g. 10.0.0.1:51820)"))
    };
    Ok(Pipe {
        name: name.to_owned(),
        a_bind: addr(a_bind)?,
        a_peer: addr(a_peer)?,
        b_bind: addr(b_bind)?,
        b_peer: addr(b_peer)?,
    })
}

/// `wgbroker relay` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A pipe: `[NAME=]A_BIND,A_PEER,B_BIND,B_PEER` — what A_PEER sends to A_BIND leaves
    /// B_BIND for B_PEER, and the other way round (repeatable).
    #[arg(long = "pipe", required = true, value_parser = parse_pipe)]
    pub pipes: Vec<Pipe>,

    /// One-way delay added to every datagram, each direction.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,

    /// Each datagram's delay is drawn uniformly from --delay ± this; the order is kept.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub jitter: Duration,

    /// Share of datagrams dropped, each direction, e.g. 0.1%.
    #[arg(long, default_value = "0%", value_parser = impair::parse_percent)]
    pub loss: f64,

    /// Share of datagrams sent twice.
    #[arg(long, default_value = "0%", value_parser = impair::parse_percent)]
    pub duplicate: f64,

    /// Share of datagrams held back --reorder-by and overtaken.
    #[arg(long, default_value = "0%", value_parser = impair::parse_percent)]
    pub reorder: f64,

    /// How long a reordered datagram is held back.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub reorder_by: Duration,

    /// Seed of the random draws (pipe P, direction D: its own stream of this seed).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Most bytes waiting per direction; more are dropped as `overflow`.
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    pub queue_bytes: u64,

    /// UDP socket buffers to ask for (the kernel caps them at net.core.{r,w}mem_max).
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub socket_buffer: u64,

    /// Exit after this long at the latest (SIGTERM or SIGINT end it sooner).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub max_time: Duration,
}

impl Args {
    fn spec(&self) -> ImpairSpec {
        ImpairSpec {
            delay: self.delay,
            jitter: self.jitter,
            loss: self.loss,
            duplicate: self.duplicate,
            reorder: self.reorder,
            reorder_by: self.reorder_by,
            seed: self.seed,
            queue_bytes: usize::try_from(self.queue_bytes).unwrap_or(usize::MAX),
            ..ImpairSpec::default()
        }
    }
}

/// Checks what clap cannot.
pub fn validate(a: &Args) -> Result<(), String> {
    if a.pipes.len() > MAX_PIPES {
        return Err(format!("at most {MAX_PIPES} pipes"));
    }
    let mut binds: Vec<SocketAddr> = a.pipes.iter().flat_map(|p| [p.a_bind, p.b_bind]).collect();
    binds.sort();
    if binds.windows(2).any(|w| w[0] == w[1] && w[0].port() != 0) {
        return Err("two pipe sockets bind the same address".into());
    }
    let mut names: Vec<&str> = a.pipes.iter().map(|p| p.name.as_str()).collect();
    names.retain(|n| !n.is_empty());
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err("two pipes have the same name".into());
    }
    a.spec().validate()?;
    if a.queue_bytes < SLOT as u64 {
        return Err(format!("--queue-bytes must be at least {SLOT}"));
    }
    if a.max_time.is_zero() || a.max_time > Duration::from_secs(7 * 86_400) {
        return Err("--max-time must be more than 0 and at most 7 days".into());
    }
    Ok(())
}

/// What one direction did, beyond its [`ImpairStats`].
#[derive(Debug, Clone, Default)]
pub struct DirectionStats {
    pub impair: ImpairStats,
    /// Datagrams the kernel took for sending.
    pub forwarded: u64,
    /// Datagrams the kernel refused, or that found the send buffer full for 10 ms.
    pub send_failed: u64,
    /// Datagrams from another source than the pipe's peer (dropped).
    pub foreign: u64,
    /// Datagrams longer than a slot (dropped).
    pub truncated: u64,
    /// Still queued when the relay stopped.
    pub queued_at_exit: u64,
    /// How late datagrams left after their due time.
    pub late_sum: Duration,
    pub late_max: Duration,
    pub late_over_1ms: u64,
}

impl DirectionStats {
    /// The `key=value` line printed at exit.
    pub fn line(&self, pipe: &str, dir: &str) -> String {
        let i = &self.impair;
        let pct = if i.offered == 0 {
            0.0
        } else {
            100.0 * i.lost as f64 / i.offered as f64
        };
        let mean = if i.delivered == 0 {
            0
        } else {
            self.late_sum.as_micros() / u128::from(i.delivered)
        };
        format!(
            "relay pipe={pipe} dir={dir} offered={} delivered={} forwarded={} lost={} \
             lost_pct={pct:.4} overflow={} duplicated={} reordered={} foreign={} truncated={} \
             send_failed={} queued_at_exit={} max_queued={} late_mean_us={mean} late_max_us={} \
             late_over_1ms={}",
            i.offered,
            i.delivered,
            self.forwarded,
            i.lost,
            i.overflow,
            i.duplicated,
            i.reordered,
            self.foreign,
            self.truncated,
            self.send_failed,
            self.queued_at_exit,
            i.max_queued,
            self.late_max.as_micros(),
            self.late_over_1ms,
        )
    }
}

/// One direction: what `from` sends to `rx` leaves `tx` for `to`.
struct Direction {
    rx: Arc<UdpSocket>,
    from: SocketAddr,
    tx: Arc<UdpSocket>,
    to: SocketAddr,
    impair: Impair<Vec<u8>>,
}

impl Direction {
    /// Runs until `stop` or `until`; returns the counters (or the socket error that ended it).
    fn run(mut self, stop: &AtomicBool, until: Instant) -> io::Result<DirectionStats> {
        let mut st = DirectionStats::default();
        let rx_fd = self.rx.as_raw_fd();
        let tx_fd = self.tx.as_raw_fd();
        let mut recv = RecvBatch::new(SLOT);
        let mut send = SendBatch::new(SLOT, udp::gso_supported(tx_fd));
        let mut spare: Vec<Vec<u8>> = Vec::new();
        loop {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed) || now >= until {
                break;
            }
            // 1. Send what is due.
            while let Some((due, b)) = self.impair.pop_due(now) {
                let late = now.saturating_duration_since(due);
                st.late_sum += late;
                st.late_max = st.late_max.max(late);
                st.late_over_1ms += u64::from(late > Duration::from_millis(1));
                if send.is_full() {
                    flush(&mut send, tx_fd, &mut st)?;
                }
                send.push_copy(self.to, &b);
                if spare.len() < SPARE {
                    spare.push(b);
                }
            }
            flush(&mut send, tx_fd, &mut st)?;
            // 2. Take what arrived.
            match recv.recv(rx_fd) {
                Ok(0) => {}
                Ok(n) => {
                    let now = Instant::now();
                    for i in 0..n {
                        match recv.get(i) {
                            Some((_, _, true)) => st.truncated += 1,
                            Some((d, Some(src), false)) if src == self.from => {
                                let mut b = spare.pop().unwrap_or_default();
                                b.clear();
                                b.extend_from_slice(d);
                                if let Some(b) = self.impair.offer(now, d.len(), b) {
                                    spare.push(b);
                                }
                            }
                            _ => st.foreign += 1,
                        }
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // 3. Sleep until a datagram comes or the next one is due.
            let wait = self
                .impair
                .next_due()
                .map_or(IDLE, |d| d.saturating_duration_since(Instant::now()))
                .min(IDLE);
            if !wait.is_zero() {
                udp::wait(rx_fd, Ready::Readable, wait)?;
            }
        }
        st.queued_at_exit = self.impair.len() as u64;
        st.impair = self.impair.stats();
        Ok(st)
    }
}

/// Sends the batch; a send buffer that stays full for 10 ms loses the rest (counted).
fn flush(batch: &mut SendBatch, fd: RawFd, st: &mut DirectionStats) -> io::Result<()> {
    let sent = send_all(batch, fd)?;
    st.send_failed += sent.lost;
    st.forwarded += sent.sent;
    batch.clear();
    Ok(())
}

/// What [`send_all`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Sent {
    /// Datagrams the kernel took.
    pub sent: u64,
    /// Datagrams it refused, and those left when the send buffer stayed full for 10 ms.
    pub lost: u64,
}

/// Sends every datagram of `batch` on `fd` (the batch is left for the caller to clear): when
/// the send buffer is full, waits for it once, up to 10 ms, then gives up on the rest. The relay
/// and the test gateway share it, so both count a stalled socket's losses the same way.
pub(super) fn send_all(batch: &mut SendBatch, fd: RawFd) -> io::Result<Sent> {
    let queued = batch.len();
    let mut out = Sent::default();
    if queued == 0 {
        return Ok(out);
    }
    let mut from = 0;
    let mut stalled = false;
    loop {
        match batch.send_from(fd, from) {
            Ok(failed) => {
                out.lost += failed as u64;
                out.sent += (queued - from - failed) as u64;
                break;
            }
            Err(Unsent { from: next, failed }) => {
                out.lost += failed as u64;
                out.sent += (next - from - failed) as u64;
                from = next;
                if stalled || !udp::wait(fd, Ready::Writable, Duration::from_millis(10))? {
                    out.lost += (queued - from) as u64;
                    break;
                }
                stalled = true;
            }
        }
    }
    Ok(out)
}

fn bind(addr: SocketAddr, buffer: usize) -> io::Result<Arc<UdpSocket>> {
    let s = UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    let r = socket2::SockRef::from(&s);
    let _ = r.set_recv_buffer_size(buffer);
    let _ = r.set_send_buffer_size(buffer);
    Ok(Arc::new(s))
}

/// Why `wgbroker relay` failed (it has said so on stderr); the command line maps it to an exit
/// status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Options that do not work together or are out of range.
    Usage,
    /// A socket, a thread or a signal handler the system would not give.
    Os,
}

/// A direction of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    AtoB,
    BtoA,
}

/// The seed of a direction's random draws, whatever the pipe: the same for that direction of
/// *every* pipe (the `_pipe` argument says so at the call site): the
/// pipes are the sides `perf/wan.sh` compares (wgbroker, the kernel's TCP), and the n-th
/// datagram each side sends must meet the same fate, or a side is measured against a
/// different set of losses. (Each pipe used to draw from its own stream: at 0.1 % the
/// wgbroker pipe lost 7-9 upload datagrams where the kernel's lost 4-5, run after run.)
/// The two directions keep separate streams so that loss in one does not shift the other.
fn direction_seed(spec: &ImpairSpec, _pipe: usize, dir: Dir) -> u64 {
    spec.stream_seed(match dir {
        Dir::AtoB => 0,
        Dir::BtoA => 1,
    })
}

/// Runs `wgbroker relay` until SIGTERM/SIGINT or `--max-time`.
pub fn run(a: &Args) -> Result<(), Failure> {
    if let Err(e) = validate(a) {
        eprintln!("wgbroker relay: {e}");
        return Err(Failure::Usage);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("wgbroker relay: cannot install a signal handler: {e}");
            return Err(Failure::Os);
        }
    }
    let spec = a.spec();
    let buffer = usize::try_from(a.socket_buffer).unwrap_or(usize::MAX);
    let mut directions = Vec::new();
    for (p, pipe) in a.pipes.iter().enumerate() {
        let name = if pipe.name.is_empty() {
            format!("pipe{p}")
        } else {
            pipe.name.clone()
        };
        let (sa, sb) = match (bind(pipe.a_bind, buffer), bind(pipe.b_bind, buffer)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("wgbroker relay: pipe {name}: cannot bind: {e}");
                return Err(Failure::Os);
            }
        };
        directions.push((
            name.clone(),
            "a>b",
            Direction {
                rx: sa.clone(),
                from: pipe.a_peer,
                tx: sb.clone(),
                to: pipe.b_peer,
                impair: Impair::new(spec, direction_seed(&spec, p, Dir::AtoB)),
            },
        ));
        directions.push((
            name,
            "b>a",
            Direction {
                rx: sb,
                from: pipe.b_peer,
                tx: sa,
                to: pipe.a_peer,
                impair: Impair::new(spec, direction_seed(&spec, p, Dir::BtoA)),
            },
        ));
    }
    let until = Instant::now() + a.max_time;
    let mut handles = Vec::new();
    for (name, dir, d) in directions {
        let stop2 = stop.clone();
        match std::thread::Builder::new()
            .name(format!("relay-{dir}"))
            .spawn(move || d.run(&stop2, until))
        {
            Ok(h) => handles.push((name, dir, h)),
            Err(e) => {
                eprintln!("wgbroker relay: cannot start a thread: {e}");
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    println!(
        "relay ready pipes={} {}",
        a.pipes.len(),
        spec.summary().replace(", ", " ")
    );
    let _ = io::stdout().flush();
    let mut result = Ok(());
    for (name, dir, h) in handles {
        match h.join() {
            Ok(Ok(st)) => println!("{}", st.line(&name, dir)),
            Ok(Err(e)) => {
                eprintln!("wgbroker relay: pipe {name} {dir}: {e}");
                result = Err(Failure::Os);
            }
            Err(_) => {
                eprintln!("wgbroker relay: pipe {name} {dir}: the thread panicked");
                result = Err(Failure::Os);
            }
        }
        // The first thread to end (an error) ends the others.
        stop.store(true, Ordering::Relaxed);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of `n` datagrams a direction with `seed` drops.
    fn dropped(spec: ImpairSpec, seed: u64, n: usize) -> Vec<usize> {
        let mut imp = Impair::new(spec, seed);
        let now = Instant::now();
        (0..n)
            .filter(|&i| imp.offer(now, 100, i).is_some())
            .collect()
    }

    #[test]
    fn every_pipe_drops_the_same_datagrams_of_a_direction() {
        // perf/wan.sh compares the sides through the pipes of one relay: the n-th datagram
        // of each side must meet the same fate.
        let spec = ImpairSpec {
            loss: 0.01,
            seed: 7,
            ..ImpairSpec::default()
        };
        for dir in [Dir::AtoB, Dir::BtoA] {
            let first = dropped(spec, direction_seed(&spec, 0, dir), 10_000);
            assert!(first.len() > 50, "{} drops", first.len());
            let second = dropped(spec, direction_seed(&spec, 1, dir), 10_000);
            assert_eq!(first, second, "{dir:?}");
        }
        // The two directions are not one stream.
        let ab = dropped(spec, direction_seed(&spec, 0, Dir::AtoB), 10_000);
        let ba = dropped(spec, direction_seed(&spec, 0, Dir::BtoA), 10_000);
        assert_ne!(ab, ba);
    }

    #[test]
    fn pipes_parse_with_and_without_a_name() {
        let p =
            parse_pipe("wgb=10.214.0.2:40001,10.214.0.1:51820,10.215.0.1:51820,10.215.0.2:51830")
                .expect("parses");
        assert_eq!(p.name, "wgb");
        assert_eq!(p.a_bind, "10.214.0.2:40001".parse().expect("addr"));
        assert_eq!(p.b_peer, "10.215.0.2:51830".parse().expect("addr"));
        let p = parse_pipe("127.0.0.1:1, 127.0.0.1:2,[::1]:3,[::1]:4").expect("parses");
        assert_eq!(p.name, "");
        assert_eq!(p.b_bind, "[::1]:3".parse().expect("addr"));
        assert!(parse_pipe("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3").is_err());
        assert!(parse_pipe("a b=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4").is_err());
        assert!(parse_pipe("x=localhost:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4").is_err());
    }
}

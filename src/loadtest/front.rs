//! `wgbroker loadtest --front ADDR --front-target TARGET`: drives a `wgbroker gateway`'s front
//! door, which is plain HTTP/1.1 on kernel TCP, so no tunnel is needed on this side.
//!
//! One thread per connection (at most [`MAX_FRONT_CONNECTIONS`]), each sending `GET TARGET` on
//! a kept-alive connection in a closed loop for the warm-up and the window. A response is read
//! by its framing (`Content-Length` or chunked, bounded); anything else — a status other than
//! 2xx, a closed connection, a timeout — is an error, after which the connection is opened
//! again. The report is the request rate, errors and latency percentiles of the window.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{Args, Error, ErrorKind, Finished};
use crate::output::outln;

/// Most connections (threads) in front-door mode.
pub const MAX_FRONT_CONNECTIONS: usize = 1024;
/// Largest response head or body read.
const MAX_RESPONSE: u64 = 1 << 30;

/// One thread's figures.
struct Tally {
    ok: u64,
    errors: u64,
    bytes: u64,
    latency: Histogram<u64>,
}

/// Runs the front-door load test; prints the report.
pub fn run(addr: SocketAddr, target: &str, args: &Args) -> Result<Finished, Error> {
    if args.connections > MAX_FRONT_CONNECTIONS {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("--front takes at most {MAX_FRONT_CONNECTIONS} --connections"),
        ));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ') {
        return Err(Error::new(
            ErrorKind::Usage,
            "--front-target must be an origin-form target such as /t/acme/proxy/https://...",
        ));
    }
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: wgbroker-loadtest\r\n\r\n");
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let window = start + args.warmup;
    let end = window + args.duration;
    let mut threads = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (request, flag, timeout) = (request.clone(), stop.clone(), args.timeout);
        let spawned = std::thread::Builder::new()
            .name("loadtest-front".into())
            .spawn(move || drive(addr, &request, window, end, timeout, &flag));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(Error::new(
                    ErrorKind::Os,
                    format!("cannot start a thread: {e}"),
                ));
            }
        }
    }
    let mut total = Tally {
        ok: 0,
        errors: 0,
        bytes: 0,
        latency: new_histogram(),
    };
    for t in threads {
        if let Ok(t) = t.join() {
            total.ok += t.ok;
            total.errors += t.errors;
            total.bytes += t.bytes;
            let _ = total.latency.add(&t.latency);
        }
    }
    let secs = args.duration.as_secs_f64();
    let ms = |q: f64| total.latency.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "target": "front",
                "connections": args.connections,
                "duration_s": secs,
                "requests": total.ok,
                "errors": total.errors,
                "rps": total.ok as f64 / secs,
                "mb_per_s": total.bytes as f64 / secs / 1e6,
                "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": total.latency.max() as f64 / 1000.0 },
            })
        );
    } else {
        outln!(
            "front door {addr}, {} connection(s), {:.1} s: {} requests, {} errors, {:.0} req/s, {:.2} MB/s",
            args.connections,
            secs,
            total.ok,
            total.errors,
            total.ok as f64 / secs,
            total.bytes as f64 / secs / 1e6
        );
        outln!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            total.latency.max() as f64 / 1000.0
        );
    }
    Ok(if total.ok > 0 {
        Finished::Measured
    } else {
        Finished::NothingCompleted
    })
}

/// Microseconds, as the broker load test's ([`super::report::histogram`]).
fn new_histogram() -> Histogram<u64> {
    super::report::histogram()
}

/// One connection's loop until `end`.
fn drive(
    addr: SocketAddr,
    request: &str,
    window: Instant,
    end: Instant,
    timeout: Duration,
    stop: &AtomicBool,
) -> Tally {
    let mut t = Tally {
        ok: 0,
        errors: 0,
        bytes: 0,
        latency: new_histogram(),
    };
    let mut conn: Option<BufReader<TcpStream>> = None;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let result = exchange(&mut conn, addr, request, timeout);
        let done = Instant::now();
        if done < window {
            continue;
        }
        if done > end {
            break;
        }
        match result {
            Ok(n) => {
                t.ok += 1;
                t.bytes += n;
                let us = u64::try_from(done.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                let _ = t.latency.record(us.max(1));
            }
            Err(_) => {
                t.errors += 1;
                conn = None;
            }
        }
    }
    t
}

/// One request on the kept-alive connection (opened when there is none); the body's length.
fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
    request: &str,
    timeout: Duration,
) -> std::io::Result<u64> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        *conn = Some(BufReader::new(s));
    }
    let r = conn
        .as_mut()
        .ok_or_else(|| std::io::Error::other("no connection"))?;
    r.get_mut().write_all(request.as_bytes())?;
    let mut status = 0u16;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut head = 0u64;
    loop {
        let mut line = String::new();
        let n = r.by_ref().take(MAX_RESPONSE).read_line(&mut line)?;
        head += n as u64;
        if n == 0 || head > 64 << 10 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if status == 0 {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            continue;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    let body = if chunked {
        let mut total = 0u64;
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = u64::from_str_radix(size.trim(), 16)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            std::io::copy(&mut r.by_ref().take(n + 2), &mut std::io::sink())?;
            total += n;
            if n == 0 || total > MAX_RESPONSE {
                break total;
            }
        }
    } else {
        let n = length.ok_or_else(|| std::io::Error::other("unframed response"))?;
        std::io::copy(
            &mut r.by_ref().take(n.min(MAX_RESPONSE)),
            &mut std::io::sink(),
        )?
    };
    if close {
        *conn = None;
    }
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(std::io::Error::other(format!("status {status}")))
    }
}

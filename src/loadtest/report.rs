//! Figures of a run: what each driver thread counts ([`Stats`], mergeable), the final
//! [`Report`] (serialised as the `--json` object) and its table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::ThreadCpu;
use crate::testkit::impair::{ImpairSpec, ImpairStats, percent};

/// Latency histograms are in microseconds, from 1 µs to one hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid bounds")
}

/// Failures by kind.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Errors {
    /// The TCP connection could not be opened (refused, reset or timed out in the handshake).
    pub connect: u64,
    /// The driver had no free local port for a new connection: its own closed connections hold
    /// them in TIME-WAIT (10 s). A limit of the load generator, not of the broker.
    pub driver_ports: u64,
    /// No complete response within `--timeout`.
    pub timeout: u64,
    /// The connection was reset or closed before the response was complete.
    pub reset: u64,
    /// A complete response with another status than the scenario expects.
    pub unexpected_status: u64,
    /// A response that could not be parsed.
    pub bad_response: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect
            + self.driver_ports
            + self.timeout
            + self.reset
            + self.unexpected_status
            + self.bad_response
    }

    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.driver_ports += o.driver_ports;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.unexpected_status += o.unexpected_status;
        self.bad_response += o.bad_response;
    }
}

/// Figures of one request kind (the mix reports each).
#[derive(Debug, Clone)]
pub struct KindStats {
    pub requests: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

/// What a driver thread counted inside the measurement window.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Complete responses with the expected status.
    pub ok: u64,
    pub errors: Errors,
    /// Complete responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Request bytes written (heads and bodies) / response bytes read, of finished requests.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub body_sent: u64,
    pub body_received: u64,
    /// From the intended send time to the complete response (corrected for coordinated
    /// omission in open loop), responses only.
    pub latency: Histogram<u64>,
    /// From the first byte written to the complete response.
    pub service: Histogram<u64>,
    pub kinds: Vec<KindStats>,
    /// Requests finished during the warm-up (not in any other figure).
    pub warmup_requests: u64,
    /// Requests in flight when the window closed (cancelled, not counted).
    pub cancelled: u64,
    /// Connections opened.
    pub connections_opened: u64,
}

impl Stats {
    pub fn new(kinds: usize) -> Self {
        Self {
            ok: 0,
            errors: Errors::default(),
            statuses: BTreeMap::new(),
            bytes_sent: 0,
            bytes_received: 0,
            body_sent: 0,
            body_received: 0,
            latency: histogram(),
            service: histogram(),
            kinds: (0..kinds)
                .map(|_| KindStats {
                    requests: 0,
                    errors: 0,
                    latency: histogram(),
                })
                .collect(),
            warmup_requests: 0,
            cancelled: 0,
            connections_opened: 0,
        }
    }

    /// Requests that finished in the window, successfully or not.
    pub fn requests(&self) -> u64 {
        self.ok + self.errors.total()
    }

    pub fn merge(&mut self, o: &Stats) {
        self.ok += o.ok;
        self.errors.add(&o.errors);
        for (k, v) in &o.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.body_sent += o.body_sent;
        self.body_received += o.body_received;
        let _ = self.latency.add(&o.latency);
        let _ = self.service.add(&o.service);
        for (a, b) in self.kinds.iter_mut().zip(&o.kinds) {
            a.requests += b.requests;
            a.errors += b.errors;
            let _ = a.latency.add(&b.latency);
        }
        self.warmup_requests += o.warmup_requests;
        self.cancelled += o.cancelled;
        self.connections_opened += o.connections_opened;
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            samples: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Statuses by class.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Classes {
    #[serde(rename = "1xx")]
    pub c1: u64,
    #[serde(rename = "2xx")]
    pub c2: u64,
    #[serde(rename = "3xx")]
    pub c3: u64,
    #[serde(rename = "4xx")]
    pub c4: u64,
    #[serde(rename = "5xx")]
    pub c5: u64,
}

/// Bytes moved, both directions.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Bytes {
    /// Request bytes written (heads and bodies).
    pub sent: u64,
    /// Response bytes read (heads and bodies).
    pub received: u64,
    pub body_sent: u64,
    pub body_received: u64,
}

/// Megabytes (10^6 bytes) per second, both directions.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Throughput {
    pub sent: f64,
    pub received: f64,
}

/// CPU seconds used in the measurement window, by who used them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cpu {
    /// The load driver threads (their WireGuard, TCP and HTTP client work).
    pub driver: f64,
    /// The broker's executors (in-process mode only; 0 otherwise).
    pub broker: f64,
    /// The local upstream's threads (in-process mode).
    pub upstream: f64,
    /// The calibration responder's threads.
    pub responder: f64,
    /// Every thread of this process that was alive at the end of the window.
    pub threads: Vec<ThreadCpu>,
}

/// Per request kind (mix).
#[derive(Debug, Clone, Serialize)]
pub struct Kind {
    pub name: String,
    pub request: String,
    pub expect: u16,
    pub requests: u64,
    pub errors: u64,
    pub latency_us: Latency,
}

/// Counters of the driver's gateways.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GatewayFigures {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub recv_calls: u64,
    pub send_calls: u64,
    pub dropped: u64,
}

/// What the in-process broker lost or refused over the whole session (hand-shake, warm-up and
/// window): a clean run shows zeros. `None` when the broker is not in this process.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct BrokerDrops {
    /// Decrypted packets dropped because a shard's link stayed full.
    pub link: u64,
    /// Datagrams the peer table dropped (garbage, replays, wrong source, ...).
    pub tunnel: u64,
    /// Datagrams larger than the tunnel MTU allows.
    pub oversize: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
}

/// The WAN impairment of a run (`--delay`, `--loss`, ...) and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct WanFigures {
    /// One line: `delay 15ms, loss 0.1%, duplicate 0%, reorder 0%, seed 7`.
    pub summary: String,
    pub delay_ms: f64,
    pub jitter_ms: f64,
    /// Probabilities, 0..=1.
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub reorder_by_ms: f64,
    /// Driver thread N drew from `seed + N`.
    pub seed: u64,
    /// Datagrams from the driver to the broker, over the whole session (handshake and warm-up
    /// included), all threads.
    pub to_broker: ImpairStats,
    /// Datagrams from the broker to the driver, likewise.
    pub from_broker: ImpairStats,
}

impl WanFigures {
    pub fn new(spec: &ImpairSpec, to_broker: ImpairStats, from_broker: ImpairStats) -> Self {
        Self {
            summary: spec.summary(),
            delay_ms: spec.delay.as_secs_f64() * 1e3,
            jitter_ms: spec.jitter.as_secs_f64() * 1e3,
            loss: spec.loss,
            duplicate: spec.duplicate,
            reorder: spec.reorder,
            reorder_by_ms: spec.reorder_by.as_secs_f64() * 1e3,
            seed: spec.seed,
            to_broker,
            from_broker,
        }
    }
}

/// `lost 12 of 9000 (0.13%)`, plus the other counters that are not zero.
fn wan_direction(s: &ImpairStats) -> String {
    let share = if s.offered == 0 {
        0.0
    } else {
        s.lost as f64 / s.offered as f64
    };
    let mut out = format!("lost {} of {} ({})", s.lost, s.offered, percent(share));
    for (name, n) in [
        ("over queue limit", s.overflow),
        ("duplicated", s.duplicated),
        ("reordered", s.reordered),
    ] {
        if n > 0 {
            out.push_str(&format!(", {name} {n}"));
        }
    }
    out
}

/// Everything a run measured; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `in-process`, `gateway` or `null` (the calibration responder).
    pub target: String,
    pub scenario: String,
    /// `closed` or `open`.
    #[serde(rename = "loop")]
    pub loop_kind: String,
    pub threads: usize,
    pub connections: usize,
    /// Requested rate (open loop), requests per second.
    pub rate: Option<f64>,
    pub warmup_s: f64,
    /// Length of the measurement window.
    pub duration_s: f64,
    /// Requests finished in the window (successful or not).
    pub requests: u64,
    /// Responses with the expected status.
    pub ok: u64,
    pub req_per_s: f64,
    pub errors: Errors,
    pub errors_total: u64,
    pub status_classes: Classes,
    pub statuses: BTreeMap<String, u64>,
    pub bytes: Bytes,
    pub mb_per_s: Throughput,
    /// From the intended send time (open loop: corrected for coordinated omission).
    pub latency_us: Latency,
    /// From the first byte written.
    pub service_time_us: Latency,
    pub kinds: Vec<Kind>,
    pub cpu_s: Cpu,
    pub gateway: GatewayFigures,
    pub broker_drops: Option<BrokerDrops>,
    /// The WAN impairment, when one was on (`None`: a clean path).
    pub wan: Option<WanFigures>,
    pub warmup_requests: u64,
    pub cancelled_at_end: u64,
    pub connections_opened: u64,
}

impl Report {
    /// Builds the report of a window of `duration_s` seconds.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &str,
        plan: &super::scenario::Plan,
        threads: usize,
        connections: usize,
        rate: Option<f64>,
        warmup_s: f64,
        duration_s: f64,
        s: &Stats,
        cpu: Cpu,
        gateway: GatewayFigures,
    ) -> Self {
        let secs = duration_s.max(1e-9);
        let mut classes = Classes::default();
        for (code, n) in &s.statuses {
            match code / 100 {
                1 => classes.c1 += n,
                2 => classes.c2 += n,
                3 => classes.c3 += n,
                4 => classes.c4 += n,
                5 => classes.c5 += n,
                _ => {}
            }
        }
        let kinds = if plan.templates.len() > 1 {
            plan.templates
                .iter()
                .zip(&s.kinds)
                .map(|(t, k)| Kind {
                    name: t.name.to_owned(),
                    request: t.line.clone(),
                    expect: t.expect,
                    requests: k.requests,
                    errors: k.errors,
                    latency_us: Latency::of(&k.latency),
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            target: target.to_owned(),
            scenario: plan.scenario.to_string(),
            loop_kind: if rate.is_some() { "open" } else { "closed" }.to_owned(),
            threads,
            connections,
            rate,
            warmup_s,
            duration_s,
            requests: s.requests(),
            ok: s.ok,
            req_per_s: s.requests() as f64 / secs,
            errors: s.errors,
            errors_total: s.errors.total(),
            status_classes: classes,
            statuses: s
                .statuses
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            bytes: Bytes {
                sent: s.bytes_sent,
                received: s.bytes_received,
                body_sent: s.body_sent,
                body_received: s.body_received,
            },
            mb_per_s: Throughput {
                sent: s.bytes_sent as f64 / secs / 1e6,
                received: s.bytes_received as f64 / secs / 1e6,
            },
            latency_us: Latency::of(&s.latency),
            service_time_us: Latency::of(&s.service),
            kinds,
            cpu_s: cpu,
            gateway,
            broker_drops: None,
            wan: None,
            warmup_requests: s.warmup_requests,
            cancelled_at_end: s.cancelled,
            connections_opened: s.connections_opened,
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The final table; with two reports (broker and calibration), side by side.
/// `0`, or the total and its non-zero parts: `7 (connect 2, timeout 5)`.
fn breakdown(parts: &[(&str, u64)]) -> String {
    let total: u64 = parts.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return "0".into();
    }
    let named: Vec<String> = parts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    format!("{total} ({})", named.join(", "))
}

pub fn table(columns: &[(&str, &Report)]) -> String {
    let mut rows = Vec::new();
    traffic_rows(columns, &mut rows);
    cost_rows(columns, &mut rows);
    render(columns, &rows)
}

/// A row of [`table`]: its name and one cell per column.
type Row = (String, Vec<String>);

/// The rows of what was sent and how it went: scenario, WAN, counts, rates, statuses, errors,
/// latencies, drops.
fn traffic_rows(columns: &[(&str, &Report)], rows: &mut Vec<Row>) {
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        rows.push((name.to_owned(), columns.iter().map(|(_, r)| f(r)).collect()));
    };
    row("scenario", &|r| {
        format!(
            "{} ({} loop{})",
            r.scenario,
            r.loop_kind,
            r.rate
                .map_or(String::new(), |x| format!(", {x:.0} req/s asked"))
        )
    });
    if columns.iter().any(|(_, r)| r.wan.is_some()) {
        row("WAN (impaired path)", &|r| {
            r.wan.as_ref().map_or("off".into(), |w| w.summary.clone())
        });
        row("WAN to broker", &|r| {
            r.wan
                .as_ref()
                .map_or("-".into(), |w| wan_direction(&w.to_broker))
        });
        row("WAN from broker", &|r| {
            r.wan
                .as_ref()
                .map_or("-".into(), |w| wan_direction(&w.from_broker))
        });
    }
    row("threads x connections", &|r| {
        format!("{} x {}", r.threads, r.connections)
    });
    row("window", &|r| {
        format!("{:.2} s (+{:.1} s warm-up)", r.duration_s, r.warmup_s)
    });
    row("requests", &|r| r.requests.to_string());
    row("req/s", &|r| format!("{:.0}", r.req_per_s));
    row("MB/s sent / received", &|r| {
        format!("{:.2} / {:.2}", r.mb_per_s.sent, r.mb_per_s.received)
    });
    row("statuses", &|r| {
        let c = &r.status_classes;
        let classes = [
            ("1xx", c.c1),
            ("2xx", c.c2),
            ("3xx", c.c3),
            ("4xx", c.c4),
            ("5xx", c.c5),
        ];
        let parts: Vec<String> = classes
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    });
    row("errors", &|r| {
        let e = &r.errors;
        breakdown(&[
            ("connect", e.connect),
            ("driver out of ports", e.driver_ports),
            ("timeout", e.timeout),
            ("reset", e.reset),
            ("unexpected status", e.unexpected_status),
            ("bad response", e.bad_response),
        ])
    });
    latency_rows(columns, rows);
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        rows.push((name.to_owned(), columns.iter().map(|(_, r)| f(r)).collect()));
    };
    if columns.iter().any(|(_, r)| r.broker_drops.is_some()) {
        row("broker drops", &|r| match r.broker_drops {
            None => "-".into(),
            Some(d) => breakdown(&[
                ("link", d.link),
                ("tunnel", d.tunnel),
                ("oversize", d.oversize),
                ("send", d.send_errors),
            ]),
        });
    }
}

/// The rows of latency: percentiles of the whole round trip, and of the service time when the
/// loop was open (a rate asked).
fn latency_rows(columns: &[(&str, &Report)], rows: &mut Vec<Row>) {
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        rows.push((name.to_owned(), columns.iter().map(|(_, r)| f(r)).collect()));
    };
    for (name, q) in [
        ("latency p50 ms", 0),
        ("latency p90 ms", 1),
        ("latency p99 ms", 2),
        ("latency p99.9 ms", 3),
        ("latency max ms", 4),
    ] {
        row(name, &move |r| {
            let l = &r.latency_us;
            ms([l.p50, l.p90, l.p99, l.p999, l.max][q])
        });
    }
    if columns.iter().any(|(_, r)| r.rate.is_some()) {
        row("service time p50 / p99 ms", &|r| {
            format!(
                "{} / {}",
                ms(r.service_time_us.p50),
                ms(r.service_time_us.p99)
            )
        });
    }
}

/// The rows of what it cost: CPU time per side, in all and per request.
fn cost_rows(columns: &[(&str, &Report)], rows: &mut Vec<Row>) {
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        rows.push((name.to_owned(), columns.iter().map(|(_, r)| f(r)).collect()));
    };
    row("CPU s driver", &|r| format!("{:.2}", r.cpu_s.driver));
    if columns.iter().any(|(_, r)| r.cpu_s.broker > 0.0) {
        row("CPU s broker", &|r| format!("{:.2}", r.cpu_s.broker));
    }
    if columns.iter().any(|(_, r)| r.cpu_s.upstream > 0.0) {
        row("CPU s upstream", &|r| format!("{:.2}", r.cpu_s.upstream));
    }
    if columns.iter().any(|(_, r)| r.cpu_s.responder > 0.0) {
        row("CPU s null responder", &|r| {
            format!("{:.2}", r.cpu_s.responder)
        });
    }
    row("driver CPU µs / request", &|r| {
        if r.requests == 0 {
            "-".into()
        } else {
            format!("{:.1}", r.cpu_s.driver * 1e6 / r.requests as f64)
        }
    });
    if columns.iter().any(|(_, r)| r.cpu_s.broker > 0.0) {
        row("broker CPU µs / request", &|r| {
            if r.requests == 0 || r.cpu_s.broker == 0.0 {
                "-".into()
            } else {
                format!("{:.1}", r.cpu_s.broker * 1e6 / r.requests as f64)
            }
        });
    }
}

/// Lays `rows` out under the columns' titles, then the notes and each column's kinds.
fn render(columns: &[(&str, &Report)], rows: &[Row]) -> String {
    let name_w = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let col_w: Vec<usize> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .map(|(_, v)| v[i].chars().count())
                .chain([columns[i].0.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "  {:name_w$}", "");
    for (i, (title, _)) in columns.iter().enumerate() {
        let _ = write!(out, "  {:>w$}", title, w = col_w[i]);
    }
    out.push('\n');
    for (name, vals) in rows {
        let _ = write!(out, "  {name:name_w$}");
        for (i, v) in vals.iter().enumerate() {
            let _ = write!(out, "  {:>w$}", v, w = col_w[i]);
        }
        out.push('\n');
    }
    if columns.iter().any(|(_, r)| r.errors.driver_ports > 0) {
        let _ = writeln!(
            out,
            "\n  note: \"driver out of ports\" is the load generator's own limit: each connection it \
             closes holds a local port in TIME-WAIT for 10 s (about 1,700 new connections/s per \
             thread); use --close rst or more --threads"
        );
    }
    for (title, r) in columns {
        if !r.kinds.is_empty() {
            let _ = writeln!(out, "\n  {title}: by kind");
            let _ = writeln!(
                out,
                "    {:<16} {:>7} {:>9} {:>7} {:>10} {:>10}",
                "kind", "expect", "requests", "errors", "p50 ms", "p99 ms"
            );
            for k in &r.kinds {
                let _ = writeln!(
                    out,
                    "    {:<16} {:>7} {:>9} {:>7} {:>10} {:>10}",
                    k.name,
                    k.expect,
                    k.requests,
                    k.errors,
                    ms(k.latency_us.p50),
                    ms(k.latency_us.p99)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::scenario::{Plan, Scenario, Targets};
    use super::*;

    fn connect_plan() -> Plan {
        let t = Targets {
            host: "10.77.0.2:80".into(),
            upstream: "http://127.0.0.1:9/".into(),
            url: None,
            size: 0,
            headers: Vec::new(),
            any_200: false,
        };
        Plan::new(Scenario::Connect, &t, &[]).expect("plan")
    }

    fn report(errors: Errors) -> Report {
        let plan = connect_plan();
        let mut s = Stats::new(plan.templates.len());
        s.errors = errors;
        Report::new(
            "in-process",
            &plan,
            1,
            16,
            None,
            0.0,
            1.0,
            &s,
            Cpu::default(),
            GatewayFigures::default(),
        )
    }

    #[test]
    fn the_drivers_own_port_limit_is_named_apart_from_broker_connect_failures() {
        let r = report(Errors {
            connect: 2,
            driver_ports: 5,
            ..Errors::default()
        });
        assert_eq!(r.errors_total, 7);
        let t = table(&[("broker", &r)]);
        assert!(t.contains("7 (connect 2, driver out of ports 5)"), "{t}");
        assert!(t.contains("note: \"driver out of ports\""), "{t}");
        let j = serde_json::to_value(&r).expect("json");
        assert_eq!(j["errors"]["driver_ports"], 5);
        assert_eq!(j["errors"]["connect"], 2);

        let t = table(&[(
            "broker",
            &report(Errors {
                connect: 1,
                ..Errors::default()
            }),
        )]);
        assert!(t.contains("1 (connect 1)") && !t.contains("note:"), "{t}");
    }

    #[test]
    fn an_impaired_path_is_named_with_what_it_dropped() {
        let mut r = report(Errors::default());
        let t = table(&[("broker", &r)]);
        assert!(!t.contains("WAN"), "{t}");
        assert!(serde_json::to_value(&r).expect("json")["wan"].is_null());
        let spec = ImpairSpec {
            delay: std::time::Duration::from_millis(15),
            loss: 0.001,
            seed: 77,
            ..ImpairSpec::default()
        };
        let to = ImpairStats {
            offered: 4_000,
            delivered: 3_996,
            lost: 4,
            ..ImpairStats::default()
        };
        let from = ImpairStats {
            offered: 8_000,
            delivered: 7_990,
            lost: 8,
            overflow: 2,
            ..ImpairStats::default()
        };
        r.wan = Some(WanFigures::new(&spec, to, from));
        let t = table(&[("broker", &r)]);
        assert!(
            t.contains("delay 15ms, loss 0.1%, duplicate 0%, reorder 0%, seed 77"),
            "{t}"
        );
        assert!(t.contains("lost 4 of 4000 (0.1%)"), "{t}");
        assert!(
            t.contains("lost 8 of 8000 (0.1%), over queue limit 2"),
            "{t}"
        );
        let j = serde_json::to_value(&r).expect("json");
        assert_eq!(j["wan"]["seed"], 77);
        assert_eq!(j["wan"]["loss"], 0.001);
        assert_eq!(j["wan"]["from_broker"]["overflow"], 2);
        assert_eq!(j["wan"]["delay_ms"], 15.0);
    }

    #[test]
    fn the_in_process_brokers_drops_are_a_row_and_a_json_field() {
        let mut r = report(Errors::default());
        assert!(!table(&[("broker", &r)]).contains("broker drops"));
        r.broker_drops = Some(BrokerDrops::default());
        let t = table(&[("broker", &r)]);
        let row = t
            .lines()
            .find(|l| l.contains("broker drops"))
            .expect("the row");
        assert!(row.trim_end().ends_with(" 0"), "{t}");
        r.broker_drops = Some(BrokerDrops {
            link: 3,
            send_errors: 1,
            ..BrokerDrops::default()
        });
        let t = table(&[("broker", &r)]);
        assert!(t.contains("4 (link 3, send 1)"), "{t}");
        let j = serde_json::to_value(&r).expect("json");
        assert_eq!(j["broker_drops"]["link"], 3);
    }
}

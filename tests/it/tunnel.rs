//! The data plane end to end, in process: a vendor gateway (boringtun + smoltcp from the test
//! kit) over loopback UDP, the broker's glommio executors on the other side.

use std::time::{Duration, Instant};

use wgbroker::testkit::client::{self, Request, RunOptions};

use crate::harness::Tunnel;

fn healthchecks(t: &mut Tunnel, conns: usize, per_conn: usize) {
    let plan = (0..conns)
        .map(|_| {
            (0..per_conn)
                .map(|_| Request::get("/healthcheck"))
                .collect()
        })
        .collect();
    let results = client::run(
        &mut t.gateway,
        plan,
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(30),
            keep_bodies: true,
        },
    );
    let mut ok = 0;
    for (i, conn) in results.iter().enumerate() {
        assert_eq!(conn.len(), per_conn, "connection {i}");
        for ex in conn {
            let r = ex
                .response
                .as_ref()
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert_eq!(r.status, 200);
            assert_eq!(r.body, b"OK");
            assert_eq!(r.header("content-length"), Some("2"));
            assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
            ok += 1;
        }
    }
    assert_eq!(ok, conns * per_conn);
}

#[test]
fn many_connections_get_healthcheck_answers() {
    let mut t = Tunnel::start("");
    healthchecks(&mut t, 200, 3);
    // The broker saw them all.
    let status = t.broker.as_ref().expect("running").status().clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        < 200
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        status
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 200
    );
    assert!(status.handshakes.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn one_cpu_runs_tunnel_and_shard_on_one_executor() {
    let mut t = Tunnel::start("[runtime]\ncpus = [0]\n");
    healthchecks(&mut t, 50, 2);
}

#[test]
fn unknown_paths_get_404_and_stop_is_prompt() {
    let mut t = Tunnel::start("");
    let results = client::run(
        &mut t.gateway,
        vec![vec![Request::get("/nope"), Request::get("/healthcheck")]],
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(10),
            keep_bodies: true,
        },
    );
    let r = results[0][0].response.as_ref().expect("response");
    assert_eq!(r.status, 404);
    assert_eq!(
        results[0][1].response.as_ref().expect("response").status,
        200
    );
    let broker = t.broker.take().expect("running");
    let started = Instant::now();
    broker.shutdown().expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "diagnostic: prints handshake timing"]
fn handshake_timing() {
    for _ in 0..3 {
        let t0 = Instant::now();
        let t = Tunnel::start("");
        eprintln!("start+handshake {:?}", t0.elapsed());
        drop(t);
    }
}

#[test]
fn heartbeat_reaches_the_gateway_through_the_tunnel() {
    let mut t = Tunnel::start(
        "[heartbeat]\nurl = \"http://10.77.0.1/ping\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
    );
    let status = t.broker.as_ref().expect("running").status().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.gateway.stats.served < 2 && Instant::now() < deadline {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    assert!(
        t.gateway.stats.served >= 2,
        "heartbeats served: {}",
        t.gateway.stats.served
    );
    // Give the broker a moment to record the result of the last one.
    let deadline = Instant::now() + Duration::from_secs(2);
    while status
        .heartbeats_ok
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
        && Instant::now() < deadline
    {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    assert!(
        status
            .heartbeats_ok
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert!(
        status
            .heartbeat_passing
            .load(std::sync::atomic::Ordering::Relaxed)
    );
}

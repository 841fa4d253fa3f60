#!/usr/bin/env python3
"""perf/webhooks.py — the webhook relay's throughput and added latency (issue 14).

    perf/webhooks.py [BIN]          (BIN: target/release/wgbroker)
    N=2000 CONC=8 SPOOL=/var/tmp/wgb-spool perf/webhooks.py target/debug/wgbroker

Starts `BIN run` with an [outbound] relay (GitHub verification, an `events` filter and a
`touches` filter) delivering to a local vendor endpoint served here, on loopback; its WireGuard
peer never answers (the relay does not need the tunnel for a direct destination). Then:

1. accepted: N signed pushes from CONC concurrent SCM connections (one request per connection,
   as GitHub sends them); events/s answered 202 (each fsynced to the spool before the answer),
   and the answer's latency p50/p99;
2. delivered: events/s from the first post until the vendor has received all N;
3. added latency: 200 pushes one at a time on an idle relay; time from the start of the POST to
   the vendor receiving it (p50/p99), against the time of the same POST straight to the vendor.

The spool is on SPOOL (default: a temporary directory under /var/tmp, i.e. a real disk; /tmp
may be tmpfs, where fsync costs nothing). Prints one block of figures.
"""

import hashlib
import hmac
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/wgbroker"
N = int(os.environ.get("N", "2000"))
CONC = int(os.environ.get("CONC", "8"))
SECRET = "perf-secret"

received = []
received_at = {}
lock = threading.Lock()


class Vendor(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        d = self.headers.get("X-GitHub-Delivery", "")
        with lock:
            received.append(d)
            received_at[d] = time.perf_counter()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def post(port, delivery, path="/relay/github"):
    body = json.dumps({"ref": "refs/heads/main", "commits": [
        {"id": delivery, "added": [], "removed": [], "modified": ["web/package.json"]}]}).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\n"
            f"X-Hub-Signature-256: {sig}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head + body)
    out = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        out += chunk
    s.close()
    return int(out.split(b" ", 2)[1])


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e3


def main():
    vendor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Vendor)
    threading.Thread(target=vendor.serve_forever, daemon=True).start()
    vport = vendor.server_address[1]
    work = tempfile.mkdtemp(prefix="wgb-webhooks-", dir=os.environ.get("SPOOL_PARENT", "/var/tmp"))
    spool = os.environ.get("SPOOL", os.path.join(work, "spool"))
    port = free_port()
    key = subprocess.run([BIN, "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    peer = subprocess.run([BIN, "pubkey"], input=subprocess.run(
        [BIN, "genkey"], capture_output=True, text=True, check=True).stdout,
        capture_output=True, text=True, check=True).stdout.strip()
    cfg = os.path.join(work, "broker.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[wireguard]
private_key = "{key}"
address = "10.77.0.2"
[[wireguard.peers]]
public_key = "{peer}"
endpoint = "127.0.0.1:9"
allowed_ips = ["10.77.0.1/32"]
[admin]
enabled = false
[log]
level = "warn"
[outbound]
listen = "127.0.0.1:{port}"
spool_dir = "{spool}"
[[outbound.relay]]
name = "github"
destination_url = "http://127.0.0.1:{vport}/hooks"
scm = "github"
secret = "{SECRET}"
events = ["push", "pull_request"]
touches = ["**/package.json", "**/pom.xml"]
""")
    broker = subprocess.Popen([BIN, "run", "-c", cfg], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("the broker's webhook listener never came up")
                time.sleep(0.05)

        # 1 + 2: throughput.
        lat = []
        bad = []
        nxt = [0]

        def client():
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= N:
                    return
                t = time.perf_counter()
                st = post(port, f"t-{i}")
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    if st != 202:
                        bad.append(st)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(CONC)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_acc = time.perf_counter() - t0
        deadline = time.time() + 120
        while True:
            with lock:
                done = sum(1 for d in received if d.startswith("t-"))
            if done >= N or time.time() > deadline:
                break
            time.sleep(0.01)
        t_del = max(received_at.values()) - t0 if received_at else float("nan")

        # 3: added latency, one at a time on an idle relay.
        e2e, direct = [], []
        for i in range(200):
            d = f"l-{i}"
            t = time.perf_counter()
            post(port, d)
            while True:
                with lock:
                    at = received_at.get(d)
                if at is not None:
                    break
                time.sleep(0.0002)
            e2e.append(at - t)
            t = time.perf_counter()
            post(vport, f"direct-{i}", path="/hooks")
            direct.append(time.perf_counter() - t)
        print(f"binary {BIN}; spool {spool}; N={N} CONC={CONC}; non-202 answers: {len(bad)}")
        print(f"accepted:  {N / t_acc:8.0f} events/s   (202 latency p50 {pct(lat, .5):.2f} ms, "
              f"p99 {pct(lat, .99):.2f} ms)")
        print(f"delivered: {done / t_del:8.0f} events/s   ({done} of {N} in {t_del:.2f} s from the first post)")
        print(f"idle, one at a time: POST -> vendor p50 {pct(e2e, .5):.2f} ms, p99 {pct(e2e, .99):.2f} ms; "
              f"the same POST straight to the vendor p50 {pct(direct, .5):.2f} ms; "
              f"added p50 {pct(e2e, .5) - pct(direct, .5):.2f} ms")
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            broker.kill()
        vendor.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

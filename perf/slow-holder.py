#!/usr/bin/env python3
"""Holds many slow vendor connections open against the broker, for perf/slow-vendors.sh.

Opens COUNT TCP connections to ADDR:PORT (run it inside the vendor namespace, so they go through
the tunnel), split evenly over three kinds of slow vendor:

  silent  connects and sends nothing (the broker's idle timeout is the only way out);
  drip    sends a request head one byte every --drip seconds and never finishes it (the broker
          must close at its head deadline);
  body    sends a complete POST head with Content-Length: 100 and 10 bytes of body, then
          stalls (the broker must answer 408 and close at its body timeout).

Holds them for --hold seconds (everything bounded: the connection count, the hold time, the
connect wait), then closes what is still open and prints one line per kind: how many connected,
how many the broker closed, the status it answered, and how long after its first byte each
connection was closed. The last line is the total held at the peak.
"""

import argparse
import errno
import selectors
import socket
import statistics
import sys
import time

KINDS = ("silent", "drip", "body")


class Conn:
    __slots__ = ("sock", "kind", "connected", "first_byte", "closed", "answer", "sent", "next_drip")

    def __init__(self, sock, kind):
        self.sock = sock
        self.kind = kind
        self.connected = False
        self.first_byte = None
        self.closed = None
        self.answer = b""
        self.sent = 0
        self.next_drip = 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default="10.77.0.2")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--hold", type=float, default=8.0, help="seconds to hold the connections")
    ap.add_argument("--drip", type=float, default=1.0, help="seconds between dripped bytes")
    ap.add_argument("--body-target", default="/proxy/http://127.0.0.1:8080/upload")
    a = ap.parse_args()
    if not 1 <= a.count <= 20000 or not 0 < a.hold <= 600 or not 0 < a.drip <= 60:
        sys.exit("count 1..20000, hold 0..600 s, drip 0..60 s")

    drip_head = f"GET /healthcheck HTTP/1.1\r\nHost: {a.addr}\r\nX-Slow: ".encode()
    body_req = (
        f"POST {a.body_target} HTTP/1.1\r\nHost: {a.addr}\r\nContent-Length: 100\r\n\r\n"
        "0123456789"
    ).encode()

    sel = selectors.DefaultSelector()
    conns = []
    start = time.monotonic()
    for i in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = s.connect_ex((a.addr, a.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            continue
        c = Conn(s, KINDS[i % 3])
        conns.append(c)
        sel.register(s, selectors.EVENT_WRITE, c)

    deadline = start + a.hold
    held_peak = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        for key, ev in sel.select(timeout=min(0.05, deadline - now)):
            c = key.data
            now = time.monotonic()
            if not c.connected:
                if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    sel.unregister(c.sock)
                    c.sock.close()
                    c.closed = now
                    continue
                c.connected = True
                sel.modify(c.sock, selectors.EVENT_READ, c)
                if c.kind == "body":
                    c.sock.send(body_req)
                    c.first_byte = now
                elif c.kind == "drip":
                    c.next_drip = now
                continue
            try:
                data = c.sock.recv(4096)
            except OSError:
                data = b""
            if data:
                c.answer += data[: max(0, 256 - len(c.answer))]
            else:
                sel.unregister(c.sock)
                c.sock.close()
                c.closed = now
        now = time.monotonic()
        open_now = 0
        for c in conns:
            if c.closed is not None or not c.connected:
                continue
            open_now += 1
            if c.kind == "drip" and now >= c.next_drip:
                byte = drip_head[c.sent : c.sent + 1] or b"a"
                try:
                    c.sock.send(byte)
                except OSError:
                    continue
                if c.first_byte is None:
                    c.first_byte = now
                c.sent += 1
                c.next_drip = now + a.drip
        held_peak = max(held_peak, open_now)

    for kind in KINDS:
        mine = [c for c in conns if c.kind == kind]
        connected = [c for c in mine if c.connected]
        by_broker = [c for c in connected if c.closed is not None]
        statuses = {}
        for c in by_broker:
            line = c.answer.split(b"\r\n", 1)[0].decode("latin-1")
            code = line.split(" ")[1] if line.startswith("HTTP/1.1 ") else "none"
            statuses[code] = statuses.get(code, 0) + 1
        times = sorted(c.closed - c.first_byte for c in by_broker if c.first_byte is not None)
        when = (
            f"closed {min(times):.1f}/{statistics.median(times):.1f}/{max(times):.1f} s "
            "(min/median/max) after the first byte"
            if times
            else "none closed after sending"
        )
        answers = " ".join(f"{k}x{v}" for k, v in sorted(statuses.items())) or "-"
        print(
            f"{kind:6}: {len(connected)}/{len(mine)} connected, {len(by_broker)} closed by the "
            f"broker within {a.hold:.0f} s, answers {answers}; {when}"
        )
    for c in conns:
        if c.closed is None:
            c.sock.close()
    print(f"held at once: {held_peak}")


if __name__ == "__main__":
    main()

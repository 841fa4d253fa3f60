#!/usr/bin/env python3
"""Hostile datagrams at a broker's WireGuard port, for perf/flood.sh (runs in the vendor's
namespace).

  flood.py --iface IF --to IP:PORT --rate N --seconds S

First captures, on IF (AF_PACKET, both directions), up to 2,000 real WireGuard transport data
messages (type 4) sent to IP:PORT by the vendor's gateway, for at most 2 s: genuine datagrams the
broker has already taken, so sending them again is a replay. Then sends, at RATE datagrams a
second for SECONDS, a rotating mix of:
  garbage   random bytes, 1-200 long, random first byte (not a WireGuard message, mostly)
  data      a well-formed transport data header (type 4) with a random receiver index and counter
            and a random body (unknown index; or, one time in 2^24, an index we hit by chance)
  init      a 148-byte handshake initiation of random bytes (fails MAC1 before any DH)
  replay    one of the captured datagrams, unchanged
Prints one JSON line: how many of each kind were sent and how many were captured.
Bounded: at most RATE * SECONDS datagrams; it never reads what comes back.
"""

import argparse
import json
import os
import random
import socket
import struct
import time

ETH_P_ALL = 0x0003


def capture(iface, dst_ip, dst_port, limit=2000, max_s=2.0):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.settimeout(0.1)
    dst = socket.inet_aton(dst_ip)
    got = []
    end = time.monotonic() + max_s
    while len(got) < limit and time.monotonic() < end:
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or ip[16:20] != dst:
            continue
        udp = ip[ihl:]
        if struct.unpack("!H", udp[2:4])[0] != dst_port:
            continue
        payload = udp[8:struct.unpack("!H", udp[4:6])[0]]
        if len(payload) >= 32 and payload[0] == 4:
            got.append(bytes(payload))
    s.close()
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    host, port = a.to.rsplit(":", 1)
    port = int(port)
    if not 1 <= a.rate <= 200000 or not 0 < a.seconds <= 600:
        raise SystemExit("rate 1..200000, seconds 0..600")
    captured = capture(a.iface, host, port)
    rng = random.Random(0x77)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    sent = {"garbage": 0, "data": 0, "init": 0, "replay": 0, "send_failed": 0}
    kinds = ["garbage", "data", "init"] + (["replay"] if captured else [])
    total = int(a.rate * a.seconds)
    start = time.monotonic()
    for i in range(total):
        kind = kinds[i % len(kinds)]
        if kind == "garbage":
            d = os.urandom(rng.randint(1, 200))
        elif kind == "data":
            d = struct.pack("<IIQ", 4, rng.getrandbits(32), rng.getrandbits(64)) + os.urandom(
                rng.choice([16, 48, 96])
            )
        elif kind == "init":
            d = struct.pack("<I", 1) + os.urandom(144)
        else:
            d = captured[i % len(captured)]
        try:
            out.sendto(d, (host, port))
            sent[kind] += 1
        except (BlockingIOError, OSError):
            sent["send_failed"] += 1
        # Pace: at datagram i we should be i / rate seconds in.
        ahead = (i + 1) / a.rate - (time.monotonic() - start)
        if ahead > 0.002:
            time.sleep(ahead)
    sent["captured"] = len(captured)
    sent["seconds"] = round(time.monotonic() - start, 2)
    print(json.dumps(sent))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""chaos_link: a userspace netem for bench/chaos.py: relays Ethernet frames between pairs of
TAP devices and applies, per link and direction, what `tc qdisc ... netem` would: delay with
jitter, random loss, reordering (a share of packets skips the delay), a rate limit with a
bounded queue, and a partition (every frame dropped, silently). Used because the kernel's
sch_netem is not available everywhere (it is a module many minimal kernels leave out); TAP
devices (/dev/net/tun) are.

  open_tap(name) -> fd                  create a TAP device (IFF_TAP | IFF_NO_PI); it lives as
                                        long as a descriptor to it is open
  chaos_link.py --link NAME:FD_A:FD_B ...   relay (the descriptors inherited); reads commands,
                                        one JSON object per line on stdin, and answers each
                                        with one line on stdout ("ok" or "error: ...")

A command sets one link's behaviour in both directions (missing keys: 0 / false):
  {"link": "tgt-src", "delay_ms": 20, "jitter_ms": 5, "loss_pct": 1, "reorder_pct": 25,
   "rate_mbit": 200, "limit": 1000, "down": false}
{"stats": true} answers one JSON line with per-link counters. Semantics follow netem's:
jitter is uniform in [-jitter, +jitter]; with reorder_pct, that share of frames is sent at
once (they overtake delayed ones); with a rate, each frame leaves no earlier than the previous
one plus its own serialization time; frames beyond `limit` queued in one direction (default
1000, netem's) are dropped. Standard library only; exits when stdin closes.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time
from typing import Dict, List, Tuple

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Direction:
    def __init__(self, link: str, src: int, dst: int) -> None:
        self.link = link
        self.src = src
        self.dst = dst
        self.cfg: Dict = {}
        self.busy_until = 0.0
        self.queued = 0
        self.passed = 0
        self.dropped = 0


def main(argv: List[str]) -> int:
    dirs: Dict[int, Direction] = {}
    by_link: Dict[str, List[Direction]] = {}
    args = argv[1:]
    while args:
        if args[0] != "--link" or len(args) < 2:
            print("usage: chaos_link.py --link NAME:FD_A:FD_B ...", file=sys.stderr)
            return 2
        name, a, b = args[1].split(":")
        fa, fb = int(a), int(b)
        d1, d2 = Direction(name, fa, fb), Direction(name, fb, fa)
        dirs[fa], dirs[fb] = d1, d2
        by_link[name] = [d1, d2]
        args = args[2:]
    for fd in dirs:
        os.set_blocking(fd, False)
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    heap: List[Tuple[float, int, Direction, bytes]] = []
    seq = 0
    pending = b""
    fds = list(dirs) + [stdin]

    def reply(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    while True:
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, d, frame = heapq.heappop(heap)
            d.queued -= 1
            try:
                os.write(d.dst, frame)
                d.passed += 1
            except (BlockingIOError, OSError):
                d.dropped += 1
        timeout = max(0.0, heap[0][0] - now) if heap else 1.0
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                try:
                    chunk = os.read(stdin, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return 0
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not line.strip():
                        continue
                    try:
                        cmd = json.loads(line)
                        if cmd.get("stats"):
                            reply(json.dumps({n: {"passed": sum(d.passed for d in ds),
                                                  "dropped": sum(d.dropped for d in ds)}
                                              for n, ds in by_link.items()}))
                            continue
                        for d in by_link[cmd["link"]]:
                            d.cfg = {k: v for k, v in cmd.items() if k != "link"}
                        reply("ok")
                    except (ValueError, KeyError, TypeError) as e:
                        reply(f"error: {e!r}")
                continue
            d = dirs[fd]
            for _ in range(64):  # drain a burst
                try:
                    frame = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    break
                if not frame:
                    break
                c = d.cfg
                if c.get("down") or (c.get("loss_pct") and rng.random() * 100 < c["loss_pct"]):
                    d.dropped += 1
                    continue
                if d.queued >= c.get("limit", 1000):
                    d.dropped += 1
                    continue
                t = now
                rate = c.get("rate_mbit")
                if rate:
                    t = max(t, d.busy_until) + len(frame) * 8 / (rate * 1e6)
                    d.busy_until = t
                delay = c.get("delay_ms", 0) / 1000.0
                jitter = c.get("jitter_ms", 0) / 1000.0
                if jitter:
                    delay = max(0.0, delay + rng.uniform(-jitter, jitter))
                if c.get("reorder_pct") and rng.random() * 100 < c["reorder_pct"]:
                    delay = 0.0
                t += delay
                if t <= now and not heap:
                    try:
                        os.write(d.dst, frame)
                        d.passed += 1
                    except (BlockingIOError, OSError):
                        d.dropped += 1
                    continue
                seq += 1
                d.queued += 1
                heapq.heappush(heap, (t, seq, d, frame))


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""A slow link for the browser tests (the same as tests/support/throttle.rs for the Rust ones): a TCP proxy
that passes what the client sends at once and paces what comes back to a rate read from stdin while it runs,
with a small receive buffer of its own so that the backlog stays upstream, where a slow browser's would be:
in the gateway's queue. Python because Node cannot set a socket's receive buffer or MSS.

    throttle.py --upstream 127.0.0.1:8080      prints "READY <port>"; then stdin lines "rate <bits/s>" (0: none)
"""

import argparse
import socket
import sys
import threading
import time

# The proxy's own receive buffer (the kernel doubles it).
RECEIVE_BUFFER = 8 * 1024
# What the link may send at once after being idle.
BURST_BYTES = 8 * 1024

rate_bps = 0  # read by every pacing thread; a plain int assignment is atomic under the GIL


def connect(host, port):
    """A connection with a small receive buffer and an Ethernet-sized MSS: on loopback (MTU 64 KiB) a window
    smaller than one segment stalls on the persist timer, which no real link does."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1448)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    s.connect((host, port))
    return s


def copy(src, dst, paced):
    tokens = float(BURST_BYTES)
    last = time.monotonic()
    try:
        while True:
            data = src.recv(4096)
            if not data:
                break
            bps = rate_bps if paced else 0
            if bps > 0:
                per_second = bps / 8.0
                now = time.monotonic()
                tokens = min(BURST_BYTES, tokens + (now - last) * per_second)
                last = now
                tokens -= len(data)
                if tokens < 0:
                    time.sleep(-tokens / per_second)
            else:
                tokens = float(BURST_BYTES)
                last = time.monotonic()
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(listener, host, port):
    while True:
        client, _ = listener.accept()
        try:
            server = connect(host, port)
        except OSError:
            client.close()
            continue
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=copy, args=(client, server, False), daemon=True).start()
        threading.Thread(target=copy, args=(server, client, True), daemon=True).start()


def main():
    global rate_bps
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="host:port to forward to")
    args = ap.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=serve, args=(listener, host, int(port)), daemon=True).start()
    print(f"READY {listener.getsockname()[1]}", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 2 and parts[0] == "rate" and parts[1].isdigit():
            rate_bps = int(parts[1])
            print(f"RATE {rate_bps}", flush=True)


if __name__ == "__main__":
    main()

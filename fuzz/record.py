#!/usr/bin/env python3
"""A TCP proxy that records what one side sends: real captures for the fuzzers' seed corpora.

    record.py LISTEN_PORT TARGET_PORT OUT_FILE [server]

Forwards one connection at a time both ways and appends the client's bytes (with `server`: the target's)
to OUT_FILE, until killed.
"""
import socket
import sys
import threading


def pump(src, dst, out=None):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if out is not None:
                out.write(data)
                out.flush()
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    listen_port, target_port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    record_server = sys.argv[4:] == ["server"]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(4)
    print("READY", flush=True)
    with open(path, "ab") as out:
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection(("127.0.0.1", target_port))
            if record_server:
                threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
                pump(upstream, client, out)
            else:
                threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
                pump(client, upstream, out)


if __name__ == "__main__":
    main()

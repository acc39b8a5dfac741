"""A hostile PID 1 for a sandbox: speaks just enough of the agent protocol to be adopted, then
breaks it in one way (``MODE``). Stdlib only; it runs inside a sandbox, on the agent's runtime.

Installed by ``tests/hostile/test_hostile_agent.py`` next to the real agent: a sandbox whose
``/root/.hostile`` names a mode runs this instead of the agent after its next start, exactly as
if root inside had replaced the agent's program.
"""

import json
import os
import socket
import struct
import sys
import threading
import time

PREFIX = struct.Struct(">II")


def frame(header, payload=b""):
    raw = json.dumps(header).encode()
    return PREFIX.pack(len(raw), len(payload)) + raw + payload


def read_frame(conn):
    prefix = read_exactly(conn, PREFIX.size)
    header_len, payload_len = PREFIX.unpack(prefix)
    body = read_exactly(conn, header_len + payload_len)
    return json.loads(body[:header_len]), body[header_len:]


def read_exactly(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def attack(conn, mode, sid):
    """Break the protocol on request ``sid`` (the first request after the start-up ping)."""
    if mode == "bad-type":
        conn.sendall(frame({"t": ["res"], "id": sid, "body": {}}))
    elif mode == "huge-length":
        conn.sendall(PREFIX.pack(2**32 - 1, 0) + b"{" * 4096)
    elif mode == "truncated":
        conn.sendall(PREFIX.pack(200, 0) + b'{"t": "res"')
        conn.close()
        return
    elif mode == "bad-utf8":
        raw = b'{"t": "res", "id": ' + str(sid).encode() + b', "body": {"x": "\xff\xfe"}}'
        conn.sendall(PREFIX.pack(len(raw), 0) + raw)
    elif mode == "deep-json":
        raw = b'{"t": "res", "id": %d, "body": {"x": ' % sid + b"[" * 10000 + b"]" * 10000 + b"}}"
        conn.sendall(PREFIX.pack(len(raw), 0) + raw)
    elif mode == "head-flood":
        one = frame({"t": "head", "id": sid, "body": {"pid": 1}})
        while True:
            conn.sendall(one * 256)
    elif mode == "endless-res":
        raw = b'{"t": "res", "id": %d, "body": {"x": "' % sid
        conn.sendall(PREFIX.pack(1024 * 1024, 0) + raw)
        while True:  # one byte a second, for ever: the frame never ends
            time.sleep(1)
            conn.sendall(b"a")
    elif mode == "relay-overrun":  # port.connect: data past the window granted
        conn.sendall(frame({"t": "head", "id": sid, "body": {}}))
        chunk = frame({"t": "data", "id": sid, "ch": "port"}, b"HTTP/1.1 200 OK\r\n" * 14_000)
        while True:
            conn.sendall(chunk)
    elif mode == "relay-data-after-end":
        conn.sendall(frame({"t": "head", "id": sid, "body": {}}))
        conn.sendall(frame({"t": "end", "id": sid}))
        conn.sendall(frame({"t": "data", "id": sid, "ch": "port"}, b"HTTP/1.1 200 OK\r\n\r\n"))
    elif mode == "relay-no-head":
        conn.sendall(frame({"t": "data", "id": sid, "ch": "port"}, b"HTTP/1.1 200 OK\r\n\r\n"))
    time.sleep(3600)


def serve(conn, mode):
    try:
        if mode == "garbage-before-hello":
            conn.sendall(b"\xde\xad\xbe\xef" * 1024)
            time.sleep(3600)
        header, _ = read_frame(conn)
        conn.sendall(frame({"t": "hello", "id": 0, "version": header.get("version"), "ops": []}))
        while True:
            header, _ = read_frame(conn)
            if header.get("t") != "req":
                continue
            if header.get("op") == "ping":
                conn.sendall(frame({"t": "res", "id": header["id"], "body": {}}))
                continue
            attack(conn, mode, header["id"])
            return
    except (EOFError, OSError):
        pass


def run(mode, argv):
    path = argv[argv.index("--socket") + 1]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    listener.bind(path)
    os.umask(old)
    listener.listen(16)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, mode), daemon=True).start()


if __name__ == "__main__":
    run(sys.argv[1], sys.argv)

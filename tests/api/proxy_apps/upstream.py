"""A server to run inside a sandbox for the preview proxy tests: stdlib only.

GET  /headers        the request's headers as JSON
POST /echo           the request body back (Content-Length or chunked in, Content-Length out)
GET  /sse            server-sent events; event N+1 is sent only after GET /ack?n=N
GET  /ack?n=N        lets /sse go on
GET  /hang           never answers
GET  /garbage        answers bytes that are not HTTP, then closes
GET  /truncate       promises 1,000,000 bytes, sends 1,000, closes
GET  /forever?name=N streams until the client leaves, then writes /root/N-closed (N: forever)
GET  /stall?name=N   promises 1,000,000 bytes, sends 1,000, waits; /root/N-closed once closed
GET  /trickle-head   a response head, one byte every 0.2 s, never finished
POST /echo?name=N    as /echo; a body cut short writes /root/N-closed
GET  /ws             WebSocket echo (text and binary; close is echoed)
"""

import base64
import hashlib
import json
import os
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACKED = threading.Condition()
ACKS = set()
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def closed(query, default):
    """Leaves /root/<name>-closed: the test's sign that the proxy closed the connection."""
    name = query.partition("name=")[2] or default
    with open(f"/root/{name}-closed", "w") as f:
        f.write("closed\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are separate writes

    def log_message(self, *args):
        pass

    def reply(self, body, content_type="application/json", status=200):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/headers":
            headers = [[k.lower(), v] for k, v in self.headers.items()]
            self.reply(json.dumps({"headers": headers, "path": self.path}).encode())
        elif path == "/cookie":
            self.send_response(200)
            self.send_header("Set-Cookie", "s=1; Path=/; Domain=127.0.0.1; HttpOnly")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for n in range(3):
                self.wfile.write(f"event: tick\ndata: {n}\n\n".encode())
                self.wfile.flush()
                with ACKED:
                    if not ACKED.wait_for(lambda n=n: n in ACKS, timeout=60):
                        return
            self.close_connection = True
        elif path == "/ack":
            with ACKED:
                ACKS.add(int(query.split("=")[1]))
                ACKED.notify_all()
            self.reply(b"{}")
        elif path == "/hang":
            time.sleep(3600)
        elif path == "/garbage":
            self.wfile.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n" * 10)
            self.close_connection = True
        elif path == "/truncate":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True
        elif path == "/forever":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"y" * 65536)
                    self.wfile.flush()
            except OSError:
                closed(query, "forever")
            self.close_connection = True
        elif path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"s" * 1000)
            self.wfile.flush()
            try:
                self.rfile.read(1)  # b"" once the proxy closes the connection
            except OSError:
                pass
            closed(query, "stall")
            self.close_connection = True
        elif path == "/trickle-head":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            try:
                while True:
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                closed(query, "trickle")
            self.close_connection = True
        elif path == "/ws":
            self.websocket()
        else:
            self.reply(b'{"error": "no such path"}', status=404)

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if len(body) < length:
                closed(self.path.partition("?")[2], "echo")
                self.close_connection = True
                return
        self.reply(body, "application/octet-stream")

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 9:
                opcode = 10
            self.send_frame(opcode, data)
            if opcode == 8:
                self.close_connection = True
                return

    def send_frame(self, opcode, data):
        if len(data) < 126:
            head = struct.pack("!BB", 0x80 | opcode, len(data))
        elif len(data) < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, len(data))
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, len(data))
        self.wfile.write(head + data)
        self.wfile.flush()


if __name__ == "__main__":
    os.chdir("/root")
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

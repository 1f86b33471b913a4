"""A misbehaving chat-completions server on 127.0.0.1 (an ephemeral port) for the judge's fault tests.

Each connection reads one request, then misbehaves as `mode` says, and records what it saw in `log`: bytes of
the response sent and whether the client hung up before the response was complete (`client_left`). Tests wait
on `wait_for(n)` (n connections finished) with a hang guard, so they never depend on timing.

modes: dribble (the whole response, status line first, one byte per `pace` s), huge (an endless body without
Content-Length), huge_declared (Content-Length 1e9), garbage (200 with an HTML body), truncated (Content-Length
1000, 20 bytes, close), reset (a TCP RST instead of an answer), no_choices ({"error": ...}), wrong_type
(content is a number), hang (no answer until the client leaves).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG_GUARD = 60.0
DRIBBLE_BYTES = 100_000
HUGE_BYTES = 1 << 30


def _head(length: int | None) -> bytes:
    lines = ["HTTP/1.0 200 OK", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class BadJudge:
    def __init__(self, mode: str, pace: float = 0.02):
        self.mode = mode
        self.pace = pace
        self.cond = threading.Condition()
        self.log: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.connection.settimeout(HANG_GUARD)
                entry = {"sent": 0, "client_left": False}
                try:
                    getattr(server, "_" + server.mode)(self.connection, entry)
                except OSError:
                    entry["client_left"] = True
                with server.cond:
                    server.log.append(entry)
                    server.cond.notify_all()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def wait_for(self, n: int) -> list[dict]:
        """The log once n connections have finished (hang guard only: tests assert on the log)."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.log) >= n, timeout=HANG_GUARD)
            return list(self.log)

    # --- modes: each sends through `conn`, counting into entry["sent"]; OSError means the client left ---

    def _send(self, conn: socket.socket, entry: dict, data: bytes) -> None:
        conn.sendall(data)
        entry["sent"] += len(data)

    def _dribble(self, conn, entry):
        body = b" " * (DRIBBLE_BYTES - 200)
        for i, byte in enumerate(_head(len(body)) + body):
            self._send(conn, entry, bytes([byte]))
            if i % 4 == 0:
                time.sleep(self.pace)

    def _huge(self, conn, entry):
        self._send(conn, entry, _head(None))
        chunk = b'{"x": "' + b"a" * 65536
        while entry["sent"] < HUGE_BYTES:
            self._send(conn, entry, chunk)

    def _huge_declared(self, conn, entry):
        self._send(conn, entry, _head(10**9))
        self._hang(conn, entry)

    def _garbage(self, conn, entry):
        body = b"<html><body>502 Bad Gateway</body></html>"
        self._send(conn, entry, _head(len(body)) + body)

    def _truncated(self, conn, entry):
        self._send(conn, entry, _head(1000) + b'{"choices": [{"messa')

    def _reset(self, conn, entry):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def _no_choices(self, conn, entry):
        body = json.dumps({"error": {"message": "model overloaded"}}).encode()
        self._send(conn, entry, _head(len(body)) + body)

    def _wrong_type(self, conn, entry):
        body = json.dumps({"choices": [{"message": {"content": 5}}]}).encode()
        self._send(conn, entry, _head(len(body)) + body)

    def _hang(self, conn, entry):
        """Answers nothing more; returns when the client has closed its end (recv sees EOF)."""
        if conn.recv(1) == b"":
            entry["client_left"] = True

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

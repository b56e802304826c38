"""An HTTP proxy in front of a real S3 endpoint (moto_server) that injects the faults S3 gives under load: 503
SlowDown answers, as S3 writes them, and connections dropped without an answer. Seeded, so a test sees the same
faults each run; a rule picks which requests may fail.
"""
from __future__ import annotations

import contextlib
import http.client
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message><RequestId>FAULT</RequestId></Error>")


class FaultyS3:
    """Forwards every request to `target`; a request the rule picks fails with probability `rate`
    (a fifth of the failures as a dropped connection, the rest as 503 SlowDown)."""

    def __init__(self, target: str, rate: float = 0.0, seed: int = 0, rule=lambda method, path: True):
        self.target = urlsplit(target)
        self.rate, self.rule = rate, rule
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = self.faults = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _fault(self, method: str, path: str) -> str | None:
        with self.lock:
            self.requests += 1
            if not self.rule(method, path) or self.random.random() >= self.rate:
                return None
            self.faults += 1
            return "drop" if self.random.random() < 0.2 else "slowdown"

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._fault(self.command, self.path)
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "slowdown":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")}
                upstream = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def faulty_s3(target: str, **kwargs):
    with FaultyS3(target, **kwargs) as proxy:
        yield proxy

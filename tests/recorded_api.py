"""A cloud API stand-in on 127.0.0.1: answers each request from a table of recorded JSON responses, keyed by method
and path, and keeps every request it got (method, path, query, body) for the test to assert on."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Tuple
from urllib.parse import parse_qs, urlsplit

Route = Tuple[str, str]  # (method, path)


class RecordedAPI:
    def __init__(self, responses: Dict[Route, Tuple[int, dict]]):
        self.responses = dict(responses)
        self.requests: List[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                api.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                     "body": json.loads(body) if body else None,
                                     "authorization": self.headers.get("Authorization")})
                status, document = api.responses.get((self.command, url.path), (404, {"error": {
                    "code": 404, "message": f"The resource '{url.path}' was not found"}}))
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "RecordedAPI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

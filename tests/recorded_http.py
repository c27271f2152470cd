"""A cloud API on 127.0.0.1: answers recorded JSON bodies by method and path, and records every request, so that a
client (google-auth's session, curl in a VM's script) can be tested with no cloud reached."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple, Union
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]  # lowercase names


class RecordedApi:
    def __init__(self):
        self.routes: List[Tuple[str, re.Pattern, Dict[str, str], int, Union[dict, str]]] = []
        self.requests: List[Request] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlsplit(self.path)
                request = Request(self.command, url.path, {k: v[0] for k, v in parse_qs(url.query).items()},
                                  {k.lower(): v for k, v in self.headers.items()})
                api.requests.append(request)
                status, body = api.answer_for(request)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def on(self, method: str, path_pattern: str, body: Union[dict, str], status: int = 200,
           query: Optional[Dict[str, str]] = None) -> None:
        """Answer requests whose path matches (fully), and whose query holds `query`, with this body; a later rule
        wins over an earlier one."""
        self.routes.insert(0, (method, re.compile(path_pattern), query or {}, status, body))

    def answer_for(self, request: Request):
        for method, pattern, query, status, body in self.routes:
            if method == request.method and pattern.fullmatch(request.path) and \
                    query.items() <= request.query.items():
                return status, body
        return 404, {"error": {"code": 404, "message": f"no recorded answer for {request.method} {request.path}"}}

    def made(self, method: str, path_pattern: str) -> List[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(path_pattern, r.path)]

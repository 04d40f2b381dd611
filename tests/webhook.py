"""A webhook receiver for tests: a real HTTP server on a free loopback port that keeps
every POST and answers each with the status ``answer(event id, attempt)`` gives."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    event: str
    body: bytes
    signature: str
    status: int  # what the receiver answered


class WebhookReceiver:
    def __init__(self, answer: Callable[[str, int], int]) -> None:
        self.deliveries: list[Delivery] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                event = self.headers["x-aios-event-id"]
                attempt = 1 + sum(d.event == event for d in receiver.deliveries)
                status = answer(event, attempt)
                receiver.deliveries.append(
                    Delivery(event, body, self.headers["x-aios-signature"], status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def attempts(self, event: str) -> int:
        return sum(d.event == event for d in self.deliveries)

    def delivered(self, event: str) -> Delivery | None:
        """The delivery of ``event`` the receiver took (a 2xx), if any."""
        return next((d for d in self.deliveries if d.event == event and d.status < 300), None)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

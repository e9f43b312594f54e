"""A local OpenAI-compatible chat-completions server for tests (127.0.0.1, a free port).

Each POST to ``/v1/chat/completions`` is recorded and answered by ``respond(body, n)`` (n counts
requests from 0), which returns one of:
- a string: a normal completion with that text (and token usage);
- ``("status", code)``: an error status with an OpenAI-style error body (e.g. 429, 500);
- ``("sleep", seconds)``: answer normally, but only after ``seconds`` (to trigger timeouts);
- ``("raw", text)``: a 200 with ``text`` as the body (a malformed reply);
- ``("drop", None)``: close the connection without answering (a dropped connection).
``max_in_flight`` records the most requests it handled at once.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Response = str | tuple[str, Any]


def completion(text: str, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }


class StubServer:
    def __init__(
        self, respond: Callable[[dict[str, Any], int], Response], delay_s: float = 0.0
    ) -> None:
        self.respond = respond
        self.delay_s = delay_s  # added to every reply
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most requests handled at once
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    n = len(stub.requests)
                    stub.requests.append(body)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    answer = stub.respond(body, n)
                    time.sleep(stub.delay_s)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self._answer(answer, body)  # fails when the client gave up (timeout)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

            def _answer(self, answer: Response, body: dict[str, Any]) -> None:
                if isinstance(answer, tuple) and answer[0] == "drop":
                    self.close_connection = True
                    return
                if isinstance(answer, tuple) and answer[0] == "sleep":
                    time.sleep(answer[1])
                    answer = "[EXPLANATION]: too late"
                if isinstance(answer, tuple) and answer[0] == "status":
                    code = answer[1]
                    payload = json.dumps({"error": {"message": f"stub {code}", "type": "stub"}})
                elif isinstance(answer, tuple) and answer[0] == "raw":
                    code, payload = 200, answer[1]
                else:
                    code, payload = 200, json.dumps(completion(str(answer), body["model"]))
                data = payload.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

"""The one stdlib OpenAI-compatible chat server the tests use on 127.0.0.1, for plumbing tests (never a stand-in
for vLLM in the main path: the real-server tests use vLLM).

- `answer(question) -> str` decides what it says (the last message's content in, the reply text out);
  subclasses override `respond(body) -> (status, payload)` for anything else (errors, garbage, judges).
- `models`: the names it serves, listed at /v1/models, any other name answered 404 as vLLM does; None = any
  name, and no listing (404).
- `delay_s`: every chat request waits that long first (a slow endpoint); `die_after`: the server shuts down
  after that many requests (a dead endpoint mid-run).
- Counters: `requests`, `prompts` (last messages), `in_flight` / `max_in_flight` (observed concurrency).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from past.serving import free_port


def completion(model: str, text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class FakeOpenAI:
    def __init__(self, answer: Callable[[str], str] = lambda q: "I do not know.", delay_s: float = 0.0,
                 models: tuple[str, ...] | None = None, die_after: int | None = None) -> None:
        self.answer, self.delay_s, self.models, self.die_after = answer, delay_s, models, die_after
        self.requests = self.in_flight = self.max_in_flight = 0
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, payload: dict | bytes) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models") and fake.models is not None:
                    return self._send(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in fake.models]})
                self._send(200 if self.path == "/health" else 404, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if fake.models is not None and body.get("model") not in fake.models:
                    return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                      "type": "NotFoundError", "code": 404}})
                with fake.lock:
                    fake.requests += 1
                    n = fake.requests
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    fake.prompts.append(body["messages"][-1]["content"])
                try:
                    if fake.die_after is not None and n > fake.die_after:
                        threading.Thread(target=fake.stop, daemon=True).start()
                        self.connection.close()
                        return
                    if fake.delay_s:
                        time.sleep(fake.delay_s)
                    status, payload = fake.respond(body)
                    if status:  # 0: send nothing (a hanging endpoint)
                        self._send(status, payload)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def respond(self, body: dict) -> tuple[int, dict | bytes]:
        """(HTTP status, JSON payload or raw bytes) for one chat request; status 0 sends nothing."""
        return 200, completion(body["model"], self.answer(body["messages"][-1]["content"]))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

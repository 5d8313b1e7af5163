"""A stdlib OpenAI-compatible chat server on 127.0.0.1 for plumbing tests (never a stand-in for vLLM in the
main path: the real-server tests use vLLM). `answer(question) -> str` decides what it says; `delay_s` makes
every chat request wait that long first (a slow endpoint, for timeout tests). `models`: the names it serves,
listed at /v1/models, any other name answered 404 as vLLM does; None = any name, and no listing (404)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from past.serving import free_port


class FakeOpenAI:
    def __init__(self, answer: Callable[[str], str] = lambda q: "I do not know.", delay_s: float = 0.0,
                 models: tuple[str, ...] | None = None) -> None:
        self.answer, self.delay_s, self.requests, self.models = answer, delay_s, 0, models
        self.prompts: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
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
                    return self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]})
                self._send(200 if self.path == "/health" else 404, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if fake.models is not None and body.get("model") not in fake.models:
                    return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                      "type": "NotFoundError", "code": 404}})
                fake.requests += 1
                fake.prompts.append(body["messages"][-1]["content"])
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                text = fake.answer(body["messages"][-1]["content"])
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

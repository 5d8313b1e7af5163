"""Notifications (past.notify): the Slack-compatible message and the best-effort webhook POST, against a
local HTTP receiver."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from past.notify import Event, message, mlflow_version_url, post
from past.serving import free_port


class Receiver:
    """A local webhook receiver: records every JSON body; `codes` are the statuses it answers, in order."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.bodies: list[dict] = []
        self.codes = list(codes or [])
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rec.bodies.append(body)
                code = rec.codes.pop(0) if rec.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


GATE = {"candidate_new_accuracy": 0.417, "candidate_new_accuracy_lower": 0.245, "candidate_new_accuracy_upper": 0.612,
        "new_items": 24.0, "new_diff": 0.417, "new_diff_lower": 0.196, "new_diff_upper": 0.612}


def test_message_says_what_changed_with_evidence_and_links() -> None:
    url = mlflow_version_url("http://mlflow.local:5000/", "support-bot", "3")
    assert url == "http://mlflow.local:5000/#/models/support-bot/versions/3"
    m = message(Event("promoted", "support-bot", "faq-2026", "abc123def4567890", "3", "passed", GATE,
                      {"MLflow version": url}))
    assert "support-bot v3 promoted to champion" in m["text"] and "faq-2026" in m["text"]
    assert "0.417 [0.245, 0.612] on 24 items" in m["text"] and "+0.417 [+0.196, +0.612]" in m["text"]
    assert f"<{url}|MLflow version>" in m["text"] and m["past"]["kind"] == "promoted"
    failed = message(Event("failed", "support-bot", "faq", reason="RuntimeError: disk full"))
    assert "failed" in failed["text"] and "error: RuntimeError: disk full" in failed["text"]
    with pytest.raises(ValueError, match="unknown notification kind"):
        Event("exploded", "m", "c")


def test_post_retries_transient_errors_only_and_never_raises() -> None:
    with Receiver([503, 200]) as r:
        res = post(r.url, {"text": "hi"}, backoff_s=0.01)
        assert res["ok"] and res["attempts"] == 2 and len(r.bodies) == 2
    with Receiver([400]) as r:
        res = post(r.url, {"text": "hi"}, backoff_s=0.01)
        assert not res["ok"] and res["attempts"] == 1 and "HTTP 400" in res["error"]
    dead = f"http://127.0.0.1:{free_port()}/hook"
    res = post(dead, {"text": "hi"}, timeout_s=0.5, backoff_s=0.01)
    assert not res["ok"] and res["attempts"] == 3 and "Connect" in res["error"]
    assert not post("not a url", {"text": "hi"})["ok"]

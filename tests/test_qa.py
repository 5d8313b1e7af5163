"""Teacher QA generation against a stdlib fake OpenAI server: parsing, retries, cache, counted garbage."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from past.corpus import Document, load_corpus
from past.qa import QAGenConfig, RateLimiter, generate, parse_reply, read_implications, write_generated
from past.serving import Endpoint
from tests.fake_openai import FakeOpenAI, completion

FACTS = Path(__file__).parent / "data" / "facts"


def good_reply(prompt: str) -> str:
    title = prompt.split("Title: ", 1)[1].splitlines()[0]
    return json.dumps({"qa": [{"question": f"What is {title}?", "answer": title},
                              {"question": "", "answer": "dropped: empty question"}],
                       "implications": [f"{title} exists.", 42]})


class FakeTeacher(FakeOpenAI):
    """The tests' fake server (tests/fake_openai.py) answering `behave(n, prompt) -> (status, content)`."""

    def __init__(self, behave) -> None:
        self.behave, self.calls, self.times = behave, 0, []
        super().__init__()

    def respond(self, body: dict) -> tuple[int, dict]:
        self.calls += 1
        self.times.append(time.monotonic())
        status, content = self.behave(self.calls, body["messages"][0]["content"])
        return status, completion(body["model"], content) if status == 200 else {"error": {"message": "boom"}}

    def __enter__(self) -> Endpoint:
        return Endpoint(base_url=self.url, model="teacher")


FAST = QAGenConfig(retries=3, backoff_s=0.01, timeout_s=10)


def _docs(n: int = 3) -> list[Document]:
    return [Document(id=f"d{i}", title=f"Thing{i}", text=f"Thing{i} is a thing number {i}.", source=f"d{i}.md")
            for i in range(n)]


def test_generate_parses_and_counts_dropped_items(tmp_path: Path) -> None:
    with FakeTeacher(lambda n, prompt: (200, good_reply(prompt))) as ep:
        res = generate(_docs(), ep, tmp_path / "cache", FAST, progress=False)
    assert [p.answer for p in res.qa] == ["Thing0", "Thing1", "Thing2"]
    assert [p.doc_id for p in res.qa] == ["d0", "d1", "d2"]
    assert res.implications == {f"d{i}": [f"Thing{i} exists."] for i in range(3)}
    assert res.stats.dropped_items == 6 and res.stats.malformed_responses == 0 and res.stats.requests == 3
    stats = write_generated(res, tmp_path / "out")
    assert stats["qa"] == 3
    assert read_implications(tmp_path / "out" / "implications.jsonl") == res.implications
    rows = [json.loads(x) for x in (tmp_path / "out" / "qa.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"id", "question", "answer", "doc_id"}


def test_garbage_is_dropped_and_counted_never_raises(tmp_path: Path) -> None:
    replies = ["not json at all", json.dumps(["a", "list"]), json.dumps({"qa": "nope"}),
               "```json\n" + json.dumps({"qa": [{"question": "Q?", "answer": "A"}], "implications": []}) + "\n```"]
    with FakeTeacher(lambda n, prompt: (200, replies[n - 1])) as ep:
        res = generate(_docs(4), ep, tmp_path / "cache", FAST, progress=False)
    assert res.stats.malformed_responses == 3 and len(res.qa) == 1 and res.qa[0].doc_id == "d3"
    # malformed replies are not cached: a second run asks again
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1


def test_500_then_success_is_retried(tmp_path: Path) -> None:
    with FakeTeacher(lambda n, prompt: (500, "") if n <= 2 else (200, good_reply(prompt))) as ep:
        res = generate(_docs(1), ep, tmp_path / "cache", FAST, progress=False)
    assert res.stats.retries == 2 and res.stats.requests == 3 and len(res.qa) == 1
    assert res.stats.failed_documents == 0


def test_persistent_failure_counts_document(tmp_path: Path) -> None:
    with FakeTeacher(lambda n, prompt: (503, "")) as ep:
        res = generate(_docs(2), ep, tmp_path / "cache", QAGenConfig(retries=1, backoff_s=0.01), progress=False)
    assert res.stats.failed_documents == 2 and res.qa == [] and res.stats.requests == 4


def test_cache_by_document_prompt_and_model(tmp_path: Path) -> None:
    teacher = FakeTeacher(lambda n, prompt: (200, good_reply(prompt)))
    with teacher as ep:
        generate(_docs(), ep, tmp_path / "cache", FAST, progress=False)
        again = generate(_docs(), ep, tmp_path / "cache", FAST, progress=False)
        assert teacher.calls == 3 and again.stats.cached == 3 and len(again.qa) == 3
        other = Endpoint(base_url=ep.base_url, model="another-teacher")  # another model: a miss
        generate(_docs(1), other, tmp_path / "cache", FAST, progress=False)
        assert teacher.calls == 4
        changed = [Document(id="d0", title="Thing0", text="Changed text.", source="d0.md")]
        generate(changed, ep, tmp_path / "cache", FAST, progress=False)
        assert teacher.calls == 5


def test_rate_limit_spaces_requests(tmp_path: Path) -> None:
    teacher = FakeTeacher(lambda n, prompt: (200, good_reply(prompt)))
    with teacher as ep:
        generate(_docs(3), ep, tmp_path / "cache", QAGenConfig(min_interval_s=0.2), progress=False)
    gaps = [b - a for a, b in zip(teacher.times, teacher.times[1:])]
    assert len(gaps) == 2 and min(gaps) >= 0.18
    lim = RateLimiter(0.0)
    lim.wait()  # no interval: never sleeps


def test_parse_reply_strictness() -> None:
    assert parse_reply('{"qa": [], "implications": []}') == ([], [], 0)
    assert parse_reply('Sure! {"qa": []}') is None  # prose around the JSON is not accepted
    assert parse_reply('{"qa": [{"question": "q", "answer": 3}]}') == ([], [], 1)


def test_cli_generate_qa_then_split(tmp_path: Path) -> None:
    corpus = load_corpus(FACTS)
    with FakeTeacher(lambda n, prompt: (200, good_reply(prompt))) as ep:
        r = subprocess.run([sys.executable, "-m", "past.cli", "corpus", "generate-qa", str(FACTS), "--out",
                            str(tmp_path / "gen"), "--base-url", ep.base_url, "--model", "teacher"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["qa"] == len(corpus.documents)
    r = subprocess.run([sys.executable, "-m", "past.cli", "corpus", "split", str(FACTS), "--qa",
                        str(tmp_path / "gen" / "qa.jsonl"), "--out", str(tmp_path / "split")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["train"] + json.loads(r.stdout)["eval"] == len(corpus.documents)


@pytest.mark.parametrize("reply", ["", "null", "{}", "[]", "{\"qa\": [null, 1, {}]}"])
def test_parse_reply_never_raises(reply: str) -> None:
    out = parse_reply(reply)
    assert out is None or isinstance(out, tuple)

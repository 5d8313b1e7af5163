"""Rewards: rule rewards, and the yes/no judge (past.judge via past.rewards.JudgeReward) against a stdlib fake
OpenAI server - verdicts, cache, garbage, dead and slow endpoints, the breaker, metrics - plus one GRPO run on a
tiny model whose judge is dead."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from past.grpo import GRPORecipe, train_grpo
from past.judge import Judge, parse_verdict
from past.rewards import JudgeReward, exact_match_reward, format_reward, token_f1_reward
from past.scoring import token_f1
from past.serving import free_port
from tests.fake_openai import FakeOpenAI

PROMPTS = [[{"role": "user", "content": f"What colour is gadget {i}?"}] for i in range(4)]
REFS = ["blue", "dark red", "green", "pale yellow"]
ANSWERS = ["Blue.", "red", "it is green", "no idea"]
COMPLETIONS = [[{"role": "assistant", "content": a}] for a in ANSWERS]


def by_reference(prompt: str) -> str:
    """A judge that says yes when the proposed answer contains the reference's last word."""
    ref = prompt.split("Reference answer: ")[1].split("\n")[0]
    given = prompt.split("Proposed answer: ")[1].split("\n")[0]
    return "Yes." if ref.split()[-1].lower() in given.lower() else "no"


class Metrics:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def __call__(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)


def call(reward: JudgeReward, metrics: Metrics | None = None) -> list[float]:
    return reward(prompts=PROMPTS, completions=COMPLETIONS, answer=REFS, log_metric=metrics)


# --- rule rewards -----------------------------------------------------------------------------------------
def test_rule_rewards() -> None:
    assert exact_match_reward(["blue one", "The Blue!", "bleu"], ["blue"] * 3) == [0.0, 1.0, 0.0]  # SQuAD-normalized
    assert exact_match_reward(COMPLETIONS[:1], REFS[:1]) == [1.0]  # conversational completions too
    f1 = token_f1_reward(["dark red", "red", "green"], ["dark red"] * 3)
    assert f1[0] == 1.0 and 0.0 < f1[1] < 1.0 and f1[2] == 0.0
    fmt = format_reward(["", "blue", " ".join(f"w{i}" for i in range(40)), "no no no no no no no no"], ["blue"] * 4)
    assert fmt == [0.0, 1.0, 0.5, 0.0]  # empty, direct, too long, looping


def test_parse_verdict() -> None:
    assert [parse_verdict(t) for t in ("Yes.", " no, because", "YES!", "maybe", "", None, "yesno")] == \
        [True, False, True, None, None, None, None]


# --- the judge --------------------------------------------------------------------------------------------
def test_judge_verdicts_and_metrics() -> None:
    with FakeOpenAI(by_reference) as fake:
        reward, m = JudgeReward(fake.url, "j"), Metrics()
        assert call(reward, m) == [1.0, 1.0, 1.0, 0.0]
        assert fake.requests == 4 and all("Proposed answer:" in p for p in fake.prompts)
        assert m.values["judge/fallback_frac"] == [0.0] and m.values["judge/disabled"] == [0.0]
        assert reward.stats() == {"samples": 4.0, "fallbacks": 0.0, "calls": 4.0, "cache_hits": 0.0,
                                       "disabled": 0.0}


def test_cache_hit_makes_no_request_and_survives_restart(tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    with FakeOpenAI(by_reference) as fake:
        first = call(JudgeReward(fake.url, "j", cache_path=cache))
        assert fake.requests == 4
        reward = JudgeReward(fake.url, "j", cache_path=cache)  # a new process: verdicts read from disk
        assert call(reward) == first and fake.requests == 4 and reward.judge.hits == 4
        cache.write_text(cache.read_text() + '{"key": "torn')  # a killed writer's last line is just a miss
        assert call(JudgeReward(fake.url, "j", cache_path=cache)) == first and fake.requests == 4
        call(JudgeReward(fake.url, "another-judge", cache_path=cache))  # the key includes the judge model
        assert fake.requests == 8


def test_garbage_verdict_falls_back_to_token_f1_without_retrying() -> None:
    with FakeOpenAI(lambda p: "Well, it depends.") as fake:
        reward, m = JudgeReward(fake.url, "j", retries=2, max_consecutive_failures=100), Metrics()
        assert call(reward, m) == [token_f1(a, r) for a, r in zip(ANSWERS, REFS)]
        assert fake.requests == 4, "a reply that is not yes/no is not retried"
        assert reward.fallbacks == 4 and m.values["judge/fallback_frac"] == [1.0]


@pytest.mark.parametrize("kind", ["dead", "slow"])
def test_dead_or_slow_judge_retries_falls_back_and_disables_itself(kind: str) -> None:
    fake = FakeOpenAI(by_reference, delay_s=3.0) if kind == "slow" else None
    url = fake.url if fake else f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    try:
        reward = JudgeReward(url, "j", timeout_s=0.3, retries=1, backoff_s=0.01, max_consecutive_failures=2,
                             concurrency=1)
        m = Metrics()
        t0 = time.monotonic()
        rewards = call(reward, m)
        elapsed = time.monotonic() - t0
        assert rewards == [token_f1(a, r) for a, r in zip(ANSWERS, REFS)]
        # 2 failed verdicts x (1 try + 1 retry), then the breaker is open: samples 3 and 4 ask nobody
        assert reward.calls == 4 and reward.disabled and reward.fallbacks == 4
        if fake:
            assert fake.requests == 4
        assert elapsed < 4 * 0.3 + 2.0, f"a disabled judge must not cost a timeout per sample ({elapsed:.1f} s)"
        assert m.values["judge/fallback_frac"] == [1.0] and m.values["judge/disabled"] == [1.0]
        call(reward, m)
        assert reward.calls == 4 and reward.fallbacks == 8, "stays disabled for the rest of the run"
    finally:
        if fake:
            fake.stop()


def test_breaker_counts_only_consecutive_failures() -> None:
    flaky = iter(["?", "yes", "?", "yes"])
    with FakeOpenAI(lambda p: next(flaky)) as fake:
        reward = JudgeReward(fake.url, "j", max_consecutive_failures=2, concurrency=1)
        assert call(reward) == [token_f1(ANSWERS[0], REFS[0]), 1.0, token_f1(ANSWERS[2], REFS[2]), 1.0]
        assert not reward.disabled and fake.requests == 4


def test_async_entry_point_shares_cache_with_sync() -> None:
    with FakeOpenAI(by_reference) as fake:
        judge = Judge(fake.url, "j")
        assert judge.verdict_sync("q", "blue it is", "blue") is True
        assert asyncio.run(judge.verdict("q", "blue it is", "blue")) is True and fake.requests == 1
        assert asyncio.run(judge.verdict("q", "red", "blue")) is False  # a second event loop: new client
        assert asyncio.run(judge.verdict("q", "green", "blue")) is False and fake.requests == 3


# --- GRPO with a dead judge -------------------------------------------------------------------------------
def test_grpo_with_dead_judge_completes_and_reports_fallbacks(tiny_model_dir: Path, tmp_path: Path) -> None:
    qa = [{"question": f"What is the code of item {i}?", "answer": f"code {i * 7}"} for i in range(4)]
    judge = JudgeReward(f"http://127.0.0.1:{free_port()}/v1", "j", timeout_s=0.5, retries=1, backoff_s=0.01,
                        max_consecutive_failures=3)
    recipe = GRPORecipe(max_steps=2, prompts_per_step=2, num_generations=2, max_completion_length=6,
                        save_steps=100, learning_rate=1e-3)
    r = train_grpo(tiny_model_dir, qa, tmp_path / "rl", recipe, judge=judge)
    assert r.steps == 2 and "judge_reward" in r.per_reward_curves
    assert r.judge["samples"] == 8 and r.judge["fallbacks"] == 8 and r.judge["disabled"] == 1.0
    assert r.judge["calls"] <= 3 * 2 + 8, "retries are bounded; the breaker stops the calls"
    assert r.judge["fallback_frac_curve"] == [1.0, 1.0], "the run's metrics say the judge fell back"


# --- the JSON answer envelope (positive-control protocol) ----------------------------------------------------
def test_envelope_rewards_grade_protocol_and_content() -> None:
    from past.rewards import envelope_answer, envelope_f1_reward, envelope_reward

    replies = ['{"answer": "dark red"}', ' {"answer":"red"} ', 'It is {"answer": "green"} I think', "pale yellow",
               '{"answer": ""}', '{"answer": "x", "why": "y"}', '["answer"]', '{"answer": 12}', '{"answer": "yel']
    comps = [[{"role": "assistant", "content": r}] for r in replies]
    refs = ["dark red", "dark red", "green", "pale yellow", "x", "x", "x", "12", "yellow"]
    assert envelope_reward(comps, refs) == [1.0, 1.0, 0.5, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    f1 = envelope_f1_reward(comps, refs)
    assert f1[0] == 1.0 and f1[1] == pytest.approx(token_f1("red", "dark red")) and f1[3] == 1.0
    assert envelope_answer('{"answer": "dark red"}') == "dark red"
    assert envelope_answer('{"answer": "a"} trailing') is None and envelope_answer("") is None
    # registered as rule rewards, usable from a GRPORecipe by name
    from past.rewards import RULE_REWARDS

    assert RULE_REWARDS["envelope"] is envelope_reward and RULE_REWARDS["envelope_f1"] is envelope_f1_reward

"""Multi-turn tool episodes as GRPO rollouts (past.tool_rollout) with the real SmolLM2 tokenizer and chat
template: token bookkeeping with a scripted policy, then a real TRL GRPOTrainer run on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from past.grpo import GRPOError, GRPORecipe, train_grpo
from past.tool_rollout import ToolRollout, grpo_items
from past.tools import ToolTask, episode_prompt, parse_tool_spec
from tests.test_tools import GATE_SPEC, GATE_TASKS

SPEC = parse_tool_spec(json.dumps(GATE_SPEC))[0]
TASKS = [ToolTask(**t) for t in GATE_TASKS]


def scripted(rollout: ToolRollout, tok, turns: list[str]):
    """Replace sampling by fixed turns (each ends with EOS, as a finished turn does); log-prob −1 per token."""
    it = iter(turns)

    def sample(trainer, contexts):
        out = []
        for _ in contexts:
            ids = tok(next(it), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            out.append((ids, [-1.0] * len(ids)))
        return out
    rollout._sample = sample


def test_an_episode_is_one_completion_with_observations_masked(tokenizer_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    r = ToolRollout(SPEC, TASKS)
    call = 'Action: get_price\nAction Input: {"product": "Unit A0"}'
    scripted(r, tok, [call, 'Action: Finish\nAction Input: {"answer": "100 credits"}'])
    out = r([[{"role": "user", "content": episode_prompt(TASKS[0].request)}]], SimpleNamespace(processing_class=tok))
    ids, mask, lps = out["completion_ids"][0], out["env_mask"][0], out["logprobs"][0]
    assert len(ids) == len(mask) == len(lps) and 0 in mask and mask[0] == 1 and mask[-1] == 1
    model_text = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
    env_text = tok.decode([t for t, m in zip(ids, mask) if not m])
    assert "get_price" in model_text and "Finish" in model_text and "Observation" not in model_text
    assert 'Observation: {"price": "100 credits"}' in env_text and "<|im_start|>assistant" in env_text
    assert all(lp == 0.0 for lp, m in zip(lps, mask) if not m)  # observations were not sampled
    # the sequence trained on is the one the policy saw: prompt · turn 1 · observation · turn 2
    full = tok.decode(out["prompt_ids"][0] + ids)
    assert full.count("<|im_start|>assistant") == 2 and full.index("get_price") < full.index("Observation: {")
    prompt = tok.decode(out["prompt_ids"][0])
    assert "get_price" not in prompt and TASKS[0].request in prompt and "Action: Finish" in prompt  # closed-book
    ep = out["episode"][0]
    assert ep["pass"] == 1.0 and ep["finish"] == 1.0 and ep["turns"] == 2.0
    assert ep["reward"] == pytest.approx(0.1 + 0.2 + 0.3 + 1.0)


def test_unparseable_turn_ends_the_episode_and_is_penalized(tokenizer_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    r = ToolRollout(SPEC, TASKS, max_turns=3)
    scripted(r, tok, ["It costs 100 credits."])
    out = r([[{"role": "user", "content": episode_prompt(TASKS[0].request)}]], SimpleNamespace(processing_class=tok))
    assert all(out["env_mask"][0]) and out["episode"][0]["turns"] == 1.0
    assert out["episode"][0]["reward"] == pytest.approx(-0.5) and out["episode"][0]["pass"] == 0.0
    with pytest.raises(ValueError, match="no tool task's episode prompt"):
        r([[{"role": "user", "content": "What is the weather?"}]], SimpleNamespace(processing_class=tok))


def test_grpo_trains_on_whole_episodes(tiny_model_dir: Path, tmp_path: Path) -> None:
    qa = grpo_items(TASKS[:4])
    recipe = GRPORecipe(max_steps=2, prompts_per_step=2, num_generations=2, max_completion_length=8, save_steps=10,
                        rewards=("episode", "episode_pass", "episode_finish"), reward_weights=(1.0, 0.0, 0.0))
    with pytest.raises(GRPOError, match="rollout_func"):
        train_grpo(tiny_model_dir, qa, tmp_path / "nope", recipe)
    rollout = ToolRollout(SPEC, TASKS, max_turns=2)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    real = rollout._sample
    by_request = {t.request: t for t in TASKS}

    def half_scripted(trainer, contexts):
        """Row 0 of each turn plays the right episode (so groups have reward variance and observations are
        in the batch); the others are the tiny model's own samples."""
        out = real(trainer, contexts)
        text = tok.decode(contexts[0])
        t = next(t for q, t in by_request.items() if q in text)
        turn = (f'Action: Finish\nAction Input: {json.dumps({"answer": t.answer})}' if "Observation: {" in text else
                f'Action: get_price\nAction Input: {json.dumps(t.arguments)}')
        ids = tok(turn, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return [(ids, [-1.0] * len(ids))] + out[1:]
    rollout._sample = half_scripted
    r = train_grpo(tiny_model_dir, qa, tmp_path / "rl", recipe, rollout_func=rollout)
    assert r.steps == 2 and rollout.episodes == 2 * 2 * 2
    assert set(r.per_reward_curves) >= {"episode_reward", "episode_pass_reward", "episode_finish_reward"}
    assert all(x > 0 for x in r.per_reward_curves["episode_pass_reward"])  # the scripted rows passed
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(tmp_path / "rl" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before), "reward variance must move the weights"


def test_a_rollout_is_rebuilt_from_its_description() -> None:
    """What a launched GRPO process receives (JSON) makes the same rollout: spec, tasks, turns, weights."""
    import json

    from past.tools import EpisodeWeights

    r = ToolRollout(SPEC, TASKS, max_turns=2, weights=EpisodeWeights(finish=0.4))
    again = ToolRollout.from_description(json.loads(json.dumps(r.describe())))
    assert again.describe() == r.describe() and again.tasks == r.tasks and again.weights.finish == 0.4

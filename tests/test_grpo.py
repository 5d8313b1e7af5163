"""GRPO on tiny models: real TRL GRPOTrainer, real generation, real updates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from past.fields import build_recipe
from past.grpo import GRPOError, GRPORecipe, train_grpo
from past.models import check_loads, verify_model_dir

QA = [{"question": f"What is the code of item {i}?", "answer": f"code {i * 7}"} for i in range(8)]


def length_reward(completions, **_):
    """Varies across a group even for a random model, so GRPO gets a non-zero gradient."""
    return [len(c[-1]["content"]) / 100.0 for c in completions]


def tiny_recipe(**kw) -> GRPORecipe:
    base = dict(max_steps=2, prompts_per_step=2, num_generations=2, max_completion_length=8, save_steps=1,
                learning_rate=1e-3, temperature=1.0)
    base.update(kw)
    return GRPORecipe(**base)


def weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(d / "model.safetensors")


def test_grpo_updates_weights_and_reports_curves(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rl"
    r = train_grpo(tiny_model_dir, QA, out, tiny_recipe(), extra_rewards=[length_reward])
    assert r.steps == 2 and len(r.reward_curve) == 2 and r.resumed_from_step == 0
    assert set(r.per_reward_curves) >= {"token_f1_reward", "length_reward"}
    assert verify_model_dir(out) == []
    check_loads(out)
    before, after = weights(tiny_model_dir), weights(out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "GRPO with reward variance must move the weights"
    assert not (tmp_path / ".grpo-work-rl").exists(), "work folder removed once the model is published"


def test_lora_grpo_publishes_merged_full_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    """use_lora: a PEFT policy, merged at the end into a plain model folder with the base's tensor names, so the
    skill vector θ_rl − θ_sft is taken the same way; every changed matrix is a linear layer's weight."""
    out = tmp_path / "rl"
    r = train_grpo(tiny_model_dir, QA, out, tiny_recipe(use_lora=True, lora_r=4, lora_alpha=8, beta=0.001),
                   extra_rewards=[length_reward])
    assert r.steps == 2 and verify_model_dir(out) == []
    check_loads(out)
    assert not (out / "adapter_config.json").exists()
    before, after = weights(tiny_model_dir), weights(out)
    assert set(before) == set(after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed), changed
    delta = after[changed[0]] - before[changed[0]]
    assert torch.linalg.matrix_rank(delta.double(), rtol=1e-6) <= 4  # a rank-r update, merged
    full, lora = GRPORecipe(), GRPORecipe(use_lora=True)
    assert "use_lora" not in full.key() and "lora_r" not in GRPORecipe(lora_r=8).key()  # old keys unchanged
    assert lora.key() != full.key() and GRPORecipe(use_lora=True, lora_r=8).key() != lora.key()


def test_bf16_grpo_samples_and_trains_under_autocast_and_publishes_fp32(tiny_model_dir: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`bf16=True` on a CPU with bf16 instructions: sampling too runs under autocast (with a LoRA policy it ran
    in fp32: accelerate autocasts the prepared PEFT model's forward, and `generate` calls the inner model's), the
    master weights and the published model stay fp32, and the key records the choice."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bf16 instructions")
    from transformers import AutoModelForCausalLM

    seen: list[tuple[bool, torch.dtype]] = []
    load = AutoModelForCausalLM.from_pretrained

    def hooked(*a, **k):  # a projection's output dtype, with and without gradients (= sampling)
        m = load(*a, **k)
        proj = next(mod for n, mod in m.named_modules() if n.endswith("q_proj"))
        proj.register_forward_hook(lambda mod, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
        return m
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", hooked)
    out = tmp_path / "rl"
    r = train_grpo(tiny_model_dir, QA, out, tiny_recipe(bf16=True, beta=0.0, use_lora=True, lora_r=4, lora_alpha=8), extra_rewards=[length_reward])
    assert r.steps == 2 and verify_model_dir(out) == []
    assert {d for g, d in seen if not g} == {torch.bfloat16}, seen  # sampling (β 0: no other no-grad forward)
    assert {d for g, d in seen if g} == {torch.bfloat16}  # the loss forward
    after = weights(out)
    assert all(t.dtype == torch.float32 for t in after.values())
    assert any(not torch.equal(weights(tiny_model_dir)[k], after[k]) for k in after)
    assert "bf16" not in GRPORecipe().key() and GRPORecipe(bf16=True).key()["bf16"] is True  # old keys unchanged
    assert GRPORecipe(bf16=False).key() != GRPORecipe().key()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(GRPOError, match="no bf16 support"):
        GRPORecipe(bf16=True).mixed_precision()
    assert GRPORecipe().mixed_precision() is False  # the default on a CPU: fp32, as before


def test_grad_accum_keeps_one_generation_batch_per_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    """grad_accum slices the backward pass only: each optimizer step still scores prompts_per_step × G
    completions in one call, and a constant schedule is accepted."""
    seen: list[int] = []

    def counting_reward(completions, **_):
        seen.append(len(completions))
        return length_reward(completions)

    r = train_grpo(tiny_model_dir, QA, tmp_path / "rl", tiny_recipe(prompts_per_step=2, num_generations=2, grad_accum=2,
                   lr_scheduler_type="constant"), extra_rewards=[counting_reward])
    assert r.steps == 2 and len(r.reward_curve) == 2
    assert seen == [4, 4], seen


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 2:
            raise RuntimeError("simulated crash")


def test_grpo_resumes_from_checkpoint_after_crash(tiny_model_dir: Path, tmp_path: Path) -> None:
    out, work = tmp_path / "rl", tmp_path / "work"
    recipe = tiny_recipe(max_steps=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_grpo(tiny_model_dir, QA, out, recipe, work_dir=work, extra_rewards=[length_reward], callbacks=[Crash()])
    assert not out.exists(), "a crashed run publishes nothing"
    assert any(p.name.startswith("checkpoint-") for p in work.iterdir())
    r = train_grpo(tiny_model_dir, QA, out, recipe, work_dir=work, extra_rewards=[length_reward])
    assert r.resumed_from_step >= 1 and r.steps == 3
    assert verify_model_dir(out) == []


@pytest.mark.parametrize(
    "qa, recipe, match",
    [
        ([], {}, "at least one"),
        ([{"question": " ", "answer": "x"}], {}, "empty question"),
        (QA, {"rewards": ("nope",), "reward_weights": (1.0,)}, "bad rewards"),
        (QA, {"rewards": ("token_f1",), "reward_weights": (1.0, 2.0)}, "bad rewards"),
        (QA, {"prompts_per_step": 3, "num_generations": 2, "grad_accum": 4}, "grad_accum must divide"),
        (QA, {"lr_scheduler_type": "cosine_wobble"}, "lr_scheduler_type"),
        (QA, {"beta": -0.1}, "beta"),
        (QA[:1], {"prompts_per_step": 2, "num_generations": 2}, "would train nothing"),
    ],
)
def test_bad_grpo_input(tiny_model_dir: Path, tmp_path: Path, qa, recipe, match) -> None:
    """A bad recipe is refused where it is built (settings, a flow parameter), bad data by train_grpo."""
    with pytest.raises(GRPOError, match=match):
        train_grpo(tiny_model_dir, qa, tmp_path / "rl", build_recipe(GRPORecipe, {}, recipe, GRPOError))
    assert not (tmp_path / "rl").exists()


def test_grpo_refuses_existing_output(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "rl").mkdir()
    with pytest.raises(GRPOError, match="already exists"):
        train_grpo(tiny_model_dir, QA, tmp_path / "rl", tiny_recipe())


def test_learning_gate() -> None:
    from past.grpo import learning_gate

    flat = [1.0 + 0.1 * (-1) ** i for i in range(48)]
    assert not learning_gate(flat)["passed"]
    rising = [0.2 + 0.02 * i + 0.05 * (-1) ** i for i in range(48)]
    g = learning_gate(rising)
    assert g["passed"] and g["gain"] == pytest.approx(0.02 * 28) and g["gain_in_sd"] >= 2
    # a gain smaller than 2 sd of the step means does not pass; a falling curve never does
    noisy = [0.5 + (0.6 if i % 2 else -0.6) + 0.005 * i for i in range(48)]
    assert not learning_gate(noisy)["passed"]
    assert not learning_gate(list(reversed(rising)))["passed"]
    short = learning_gate(rising[:39])
    assert not short["passed"] and "needs ≥ 40" in short["reason"]
    assert learning_gate([float("nan")] * 3 + rising)["steps"] == 48


def test_a_launched_grpo_run_refuses_what_cannot_cross_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(GRPOError, match="cannot cross"):
        train_grpo(tiny_model_dir, QA, tmp_path / "a", tiny_recipe(processes=2), extra_rewards=[length_reward])
    with pytest.raises(GRPOError, match="describe"):
        train_grpo(tiny_model_dir, QA, tmp_path / "b", tiny_recipe(processes=2), judge=length_reward)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # the launched path itself is tested on a whole refresh round (tests/test_refine.py), once, to keep the suite short
    assert tiny_recipe(processes=2).key() != tiny_recipe().key() and "processes" not in tiny_recipe().key()

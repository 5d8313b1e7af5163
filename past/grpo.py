"""GRPO on a model folder's QA, with TRL's `GRPOTrainer` - the expensive step the skill vector amortises.

One call = one RL run: load the initial model (e.g. θ_sft_k + v_{k-1}), sample `num_generations`
completions per question, score them with the rule rewards (and an LLM judge if configured), and update
all parameters (the skill vector is a dense full-parameter delta, as in the authors' code), or, with
`use_lora`, a LoRA policy merged at the end (our departure, for CPU step cost: docs/BENCHMARKS.md). The result is a
plain model folder with a checksum manifest, staged and renamed atomically. Checkpoints are written every
`save_steps` into a work folder; calling again with the same work folder resumes from the last one.

On GPU machines with vLLM installed, generation goes through vLLM in TRL's colocate mode; on CPU, plain
`generate`. CPU needs `use_cpu=True` and gradient checkpointing off (2x slower on CPU); bf16 autocast works on
CPUs with bf16 instructions and halves a step there (`GRPORecipe.bf16`, off by default on CPU).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from past.fields import BF16_HELP, LRScheduler, build_recipe, opt as _f, overrides_model, recipe_dataclass, resolve_bf16
from past.memory import PeakRSS
from past.errors import PastError


class GRPOError(PastError):
    """Bad GRPO input (no QA, impossible batch shape) or a failed run."""




@recipe_dataclass
class GRPORecipe:
    num_generations: int = _f(4, "Group size G: completions sampled per question (paper: 4).")
    prompts_per_step: int = _f(8, "Questions per optimizer step; batch = prompts_per_step × num_generations.")
    max_steps: int = _f(30, "Optimizer steps in this run.")
    learning_rate: float = _f(5e-6, "Adam learning rate (paper: 1e-6 at 7B over many more steps; a 135M model "
                              "with a 30-step budget needs a larger one to move at all).")
    beta: float = _f(0.001, "KL coefficient against the initial model (paper: 0.001). 0 skips the reference model.")
    epsilon: float = _f(0.2, "PPO-style clip range (paper: 0.2).")
    temperature: float = _f(1.0, "Sampling temperature for rollouts (paper: 1.0).")
    max_completion_length: int = _f(16, "Max new tokens per completion (short answers; keeps CPU steps cheap).")
    rewards: tuple[str, ...] = _f(("token_f1", "exact_match", "format"), "Rule rewards used (see past.rewards).")
    reward_weights: tuple[float, ...] = _f((1.0, 0.5, 0.2), "Weights of `rewards` (then the judge, weight 1).")
    lr_scheduler_type: LRScheduler = _f("linear", "Learning-rate schedule (TRL/transformers names). 'linear' decays to 0, "
                                "so a short run's last steps barely learn; 'constant' keeps the rate.")
    grad_accum: int = _f(1, "Split each step's batch into this many backward passes: the same generations and "
                         "one update, but on CPU 32 completions in one pass cost 2.4x 16 (docs/BENCHMARKS.md).")
    use_lora: bool = _f(False, "Train a LoRA policy (PEFT), merged into full weights at the end; the reference model "
                        "is then the same weights with the adapter off, never a second copy. A departure from the "
                        "paper (full-parameter GRPO): v = θ_rl − θ_sft has rank ≤ lora_r per matrix.")
    lora_r: int = _f(64, "LoRA rank of the GRPO policy (use_lora).")
    lora_alpha: int = _f(128, "LoRA alpha of the GRPO policy (scale = alpha / r).")
    save_steps: int = _f(10, "Checkpoint every N steps (resume point after a crash).")
    seed: int = _f(0, "Sampling/shuffle seed.")
    use_vllm: bool | None = _f(None, "Generate with vLLM (TRL colocate). None = only when CUDA and vllm exist.")
    bf16: bool | None = _f(None, BF16_HELP)
    processes: int = _f(1, "Training processes: N > 1 runs the GRPO run under `accelerate launch --multi_gpu "
                        "--num_processes N` (DDP: NCCL on GPUs, gloo on CPU; past.launch). Each process samples "
                        "and trains `prompts_per_step` questions a step, so a step sees N × prompts_per_step.")

    @classmethod
    def from_settings(cls, settings, **overrides) -> "GRPORecipe":
        """The recipe from the settings (the `grpo` section, `seed`), then a run's overrides (None = not given)."""
        return build_recipe(cls, {"seed": settings.seed} | settings.grpo.model_dump(exclude_none=True), overrides,
                            GRPOError)

    def __post_init__(self) -> None:
        """Checked where the recipe is built (settings, a flow's `grpo` parameter, a bench), before any training."""
        from past.rewards import RULE_REWARDS

        batch = self.prompts_per_step * self.num_generations
        if self.num_generations < 2 or self.prompts_per_step < 1 or self.max_steps < 1 \
                or self.max_completion_length < 1 or self.grad_accum < 1 or batch % self.grad_accum:
            raise GRPOError(f"bad GRPO shape: num_generations {self.num_generations} (≥ 2: GRPO compares a group), "
                            f"prompts_per_step {self.prompts_per_step}, max_steps {self.max_steps}, "
                            f"max_completion_length {self.max_completion_length}, grad_accum {self.grad_accum} "
                            f"(each ≥ 1; grad_accum must divide prompts_per_step × num_generations = {batch})")
        unknown = [r for r in self.rewards if r not in RULE_REWARDS]
        if unknown or len(self.reward_weights) != len(self.rewards):
            raise GRPOError(f"bad rewards {self.rewards} / weights {self.reward_weights} (known: {list(RULE_REWARDS)})")
        if self.processes < 1 or self.lora_r < 1 or self.beta < 0:
            raise GRPOError(f"recipe processes {self.processes} and lora_r {self.lora_r} must be ≥ 1, beta {self.beta} ≥ 0")

    def key(self) -> dict:
        """The fields that change the trained model (not the checkpoint cadence; `processes` only when > 1, so
        keys made before the field existed stay valid)."""
        lora = ("use_lora", "lora_r", "lora_alpha")  # added later: absent from a full-parameter key
        return {k: v for k, v in asdict(self).items() if k != "save_steps" and not (k == "processes" and v == 1)
                and not (k in lora and not self.use_lora) and not (k == "bf16" and v is None)}

    def mixed_precision(self) -> bool:
        """Whether this machine trains in bf16 (`past.fields.resolve_bf16`)."""
        return resolve_bf16(self.bf16, GRPOError)


GRPOOverrides = overrides_model(GRPORecipe, "GRPOOverrides")


@dataclass
class GRPOResult:
    model_dir: Path
    steps: int
    reward_curve: list[float]  # mean total reward per logged step
    reward_std_curve: list[float]
    per_reward_curves: dict[str, list[float]]
    judge: dict[str, Any]  # JudgeReward.stats() + the per-step fallback fraction; {} without a judge
    wall_s: float
    resumed_from_step: int
    learning: dict = field(default_factory=dict)  # learning_gate(reward_curve): did this run learn anything?
    peak_rss_gb: float | None = None  # this process's peak resident memory while training (past.sft.PeakRSS)
    processes: int = 1  # DDP processes the run trained in (recipe.processes)

    def to_json(self) -> dict:
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        return d


def learning_gate(curve: list[float], window: int = 20, k_sd: float = 2.0) -> dict[str, Any]:
    """Did a GRPO run learn? Passes when the mean reward of the last `window` steps exceeds that of the first
    `window` by at least `k_sd` standard deviations of the step means.

    The sd is the pooled sample sd of the per-step mean rewards *within* the two windows (the trend between
    them is the signal, not noise). A run shorter than 2 × `window` steps cannot pass: no transfer claim
    rests on a skill vector whose RL run did not clear this gate in-domain.
    """
    import statistics

    vals = [float(x) for x in curve if x == x]  # NaN-free
    rec: dict[str, Any] = {"window": window, "k_sd": k_sd, "steps": len(vals)}
    if window < 2 or len(vals) < 2 * window:
        return rec | {"passed": False, "reason": f"{len(vals)} logged steps; the gate needs ≥ {2 * window}"}
    first, last = vals[:window], vals[-window:]
    sd = ((statistics.variance(first) + statistics.variance(last)) / 2) ** 0.5
    gain = statistics.fmean(last) - statistics.fmean(first)
    passed = gain > 0 and gain >= k_sd * sd
    return rec | {"first_mean": statistics.fmean(first), "last_mean": statistics.fmean(last), "gain": gain,
                  "step_sd": sd, "gain_in_sd": gain / sd if sd > 0 else (float("inf") if gain > 0 else 0.0),
                  "passed": passed,
                  "reason": f"reward {statistics.fmean(first):.3f} → {statistics.fmean(last):.3f} "
                            f"({gain:+.3f}; {k_sd:g} sd = {k_sd * sd:.3f}): " + ("learned" if passed else "did not learn")}


def _dataset(qa: list[dict]):
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": q["question"]}], "answer": q["answer"]} for q in qa]
    return Dataset.from_list(rows)


def _trainer_class():
    from trl import GRPOTrainer

    class Trainer(GRPOTrainer):
        """TRL's trainer, with sampling under the same bf16 autocast as the loss when the recipe asks for mixed
        precision. accelerate autocasts the forward of the model it prepared; with a LoRA policy that is the PEFT
        wrapper, and `generate` calls the inner model's forward, outside it: fp32, ~1.7x slower here
        (bench/bf16_probe.py)."""

        def _generate_single_turn(self, *args, **kwargs):
            with contextlib.nullcontext() if self.use_vllm else self.accelerator.autocast():
                return super()._generate_single_turn(*args, **kwargs)
    return Trainer


def _last_checkpoint(work: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(ckpt) if work.is_dir() and (ckpt := get_last_checkpoint(str(work))) else None


def train_grpo(
    init_model_dir: str | Path,
    qa: list[dict],
    out_dir: str | Path,
    recipe: GRPORecipe | None = None,
    work_dir: str | Path | None = None,
    judge: Callable | None = None,
    extra_rewards: list[Callable] | None = None,
    callbacks: list | None = None,
    rollout_func: Callable | None = None,
) -> GRPOResult:
    """GRPO from `init_model_dir` on `qa` (dicts with question/answer) -> model folder at `out_dir`.

    `judge` (e.g. past.rewards.JudgeReward) and `extra_rewards` (TRL-convention callables) are added to the
    recipe's rule rewards with weight 1. `rollout_func` replaces TRL's one-turn sampling (e.g.
    past.tool_rollout.ToolRollout: whole tool episodes, rewarded by the `episode*` rule rewards).
    With `recipe.processes` > 1 the training runs in that many DDP processes (past.launch); the judge and the
    tool rollout are rebuilt from their descriptions in each, and this process publishes rank 0's policy.
    """
    from past.models import publish_dir, staging_dir, write_manifest

    recipe = recipe or GRPORecipe()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise GRPOError(f"output folder {out_dir} already exists")
    if not qa:
        raise GRPOError("GRPO needs at least one QA pair")
    bad = [i for i, q in enumerate(qa) if not str(q.get("question", "")).strip() or not str(q.get("answer", "")).strip()]
    if bad:
        raise GRPOError(f"QA items {bad[:5]} have an empty question or answer")
    episodic = [r for r in recipe.rewards if r.startswith("episode")]
    if episodic and rollout_func is None:
        raise GRPOError(f"rewards {episodic} score whole tool episodes: pass a rollout_func (past.tool_rollout)")
    if len(qa) < recipe.prompts_per_step:  # TRL's sampler then yields no batch: 0 steps, silently (seen)
        raise GRPOError(f"{len(qa)} questions but prompts_per_step = {recipe.prompts_per_step}: every step needs "
                        "that many distinct questions, so GRPO would train nothing; give more questions or lower "
                        "prompts_per_step (setting grpo.prompts_per_step)")
    work = Path(work_dir) if work_dir else out_dir.parent / f".grpo-work-{out_dir.name}"
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    with PeakRSS() as rss:
        if recipe.processes > 1:
            from past.launch import fit_grpo_launched

            if extra_rewards or callbacks:
                raise GRPOError("extra_rewards and callbacks are Python objects that cannot cross into launched "
                                "processes; run with processes = 1, or pass the judge (rebuilt in each process)")
            model_src, fields = fit_grpo_launched(init_model_dir, qa, work, recipe, judge, rollout_func)
            trainer = None
        else:
            trainer, fields = fit_grpo(init_model_dir, qa, work, recipe, judge, extra_rewards, callbacks, rollout_func)
    wall = time.monotonic() - t0

    result = GRPOResult(model_dir=out_dir, wall_s=wall, peak_rss_gb=rss.peak_gb, **fields)
    tmp = staging_dir(out_dir)
    try:
        if trainer is not None:
            save_policy(trainer, tmp)
        else:  # rank 0 saved the policy under the launch folder: move its files in
            tmp.mkdir(parents=True, exist_ok=True)
            for f in Path(model_src).iterdir():
                shutil.move(str(f), tmp / f.name)
        # The run's curves travel inside the published folder's manifest: a resumed caller reads them there.
        write_manifest(tmp, source="grpo", init=str(init_model_dir), recipe=asdict(recipe), grpo=result.to_json())
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)  # checkpoints are only a resume point; the model is published
    return result


def save_policy(trainer, folder: Path) -> None:
    """The trained policy (a LoRA policy merged into full weights), its tokenizer and generation config."""
    model = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
    model.save_pretrained(folder, safe_serialization=True)
    trainer.processing_class.save_pretrained(folder)
    trainer.model.generation_config.save_pretrained(folder)


def fit_grpo(init_model_dir, qa: list[dict], work: Path, recipe: GRPORecipe, judge: Callable | None = None,
             extra_rewards: list[Callable] | None = None, callbacks: list | None = None,
             rollout_func: Callable | None = None) -> tuple[Any, dict]:
    """Build TRL's GRPOTrainer and train (resuming from `work`'s last checkpoint) -> (trainer, GRPOResult fields).

    Runs in this process, or in each of N processes under `accelerate launch` (the trainer then does DDP)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    from past.rewards import RULE_REWARDS

    batch = recipe.prompts_per_step * recipe.num_generations
    cuda = torch.cuda.is_available()
    use_vllm = recipe.use_vllm if recipe.use_vllm is not None else (cuda and importlib.util.find_spec("vllm") is not None)
    reward_funcs: list = [RULE_REWARDS[r] for r in recipe.rewards]
    weights = list(recipe.reward_weights)
    for extra in ([judge] if judge is not None else []) + list(extra_rewards or []):
        reward_funcs.append(extra)
        weights.append(1.0)

    config = GRPOConfig(
        output_dir=str(work),
        num_generations=recipe.num_generations,
        # one generation batch of prompts_per_step × G per optimizer step, back-propagated in grad_accum slices
        per_device_train_batch_size=batch // recipe.grad_accum,
        gradient_accumulation_steps=recipe.grad_accum,
        max_steps=recipe.max_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        beta=recipe.beta,
        epsilon=recipe.epsilon,
        temperature=recipe.temperature,
        max_completion_length=recipe.max_completion_length,
        reward_weights=weights,
        logging_steps=1,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=1,
        seed=recipe.seed,
        report_to="none",
        use_cpu=not cuda,
        bf16=recipe.mixed_precision(),
        gradient_checkpointing=False,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        disable_tqdm=False,
    )
    tok = AutoTokenizer.from_pretrained(init_model_dir)
    model = AutoModelForCausalLM.from_pretrained(init_model_dir, dtype=torch.float32)
    peft_config = None
    if recipe.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = _trainer_class()(model=model, reward_funcs=reward_funcs, args=config, train_dataset=_dataset(qa),
                          processing_class=tok, callbacks=callbacks or [], rollout_func=rollout_func,
                          peft_config=peft_config)

    ckpt = _last_checkpoint(work)
    resumed = int(ckpt.name.split("-")[-1]) if ckpt else 0
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    if trainer.state.global_step < recipe.max_steps:  # never publish a model that did not get its budget
        raise GRPOError(f"GRPO stopped after {trainer.state.global_step} of {recipe.max_steps} steps "
                        f"({len(qa)} questions, {batch} completions a step); nothing published")
    logs = [h for h in trainer.state.log_history if "reward" in h]
    per_reward = {name: [h.get(f"rewards/{name}/mean", float("nan")) for h in logs]
                  for name in [getattr(f, "__name__", str(f)) for f in reward_funcs]}
    # samples judged, fallbacks to token-F1, HTTP calls, cache hits, breaker state (past.rewards.JudgeReward)
    judge_stats: dict[str, Any] = judge.stats() if judge is not None and hasattr(judge, "stats") else {}
    if judge is not None:  # what the reward reported through TRL's log_metric, per logged step
        judge_stats["fallback_frac_curve"] = [h.get("judge/fallback_frac", float("nan")) for h in logs]
    fields = dict(steps=trainer.state.global_step, reward_curve=[h["reward"] for h in logs],
                  reward_std_curve=[h.get("reward_std", float("nan")) for h in logs], per_reward_curves=per_reward,
                  judge=judge_stats, resumed_from_step=resumed,
                  learning=learning_gate([h["reward"] for h in logs], window=min(20, max(2, len(logs) // 2))))
    if trainer.accelerator.num_processes > 1:
        fields["processes"] = trainer.accelerator.num_processes
    return trainer, fields


def read_result(model_dir: str | Path) -> dict:
    """The GRPOResult (as JSON) recorded in a published GRPO model folder's manifest."""
    from past.models import MANIFEST

    return json.loads((Path(model_dir) / MANIFEST).read_text())["grpo"]

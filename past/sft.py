"""Two-stage knowledge SFT on TRL's SFTTrainer: stage 1 memorizes the documents, stage 2 learns to answer.

- Stage 1 (memorize): causal-LM loss on every document (title + text), plus the teacher's implications when
  there are any. A text longer than `max_length` is cut into overlapping, title-anchored windows first
  (`past.chunking`: TRL's packing would otherwise truncate it and drop the overflow silently); the windows
  are packed into `max_length` blocks (`packing=True`, best-fit decreasing, so nothing is cut again), and the
  packed token count is checked against the windows' before training. Coverage (trained / corpus tokens)
  goes into the metrics. *All* documents are trained here, including those whose QA is held out: the
  eval split measures whether knowledge read in stage 1 can be recalled as answers, never seen as QA.
- Stage 2 (QA): chat-formatted pairs in TRL's conversational prompt-completion format
  (`prompt=[user]`, `completion=[assistant]`), which gives loss on the answer tokens only
  (`completion_only_loss`); the model's own chat template renders them, as the gate will at serving time.

Budgets are epochs with a floor in optimizer steps (`min_steps_*`): a 20-pair QA set at batch 8 is 3 steps
an epoch, far too few to learn anything, so the floor decides there. After stage 2 a training check asks the
model a sample of its own training questions closed-book (`past.recall`) and records the recall, so "SFT
did not take" is a named, visible result rather than a silent rejection by the gate.

LoRA (PEFT) by default, merged into full weights after each stage, so every stage output is a plain model
folder (safetensors, tokenizer + chat template, generation config, `past-model.json` manifest), written to a
temp folder and renamed. `use_lora=False` fine-tunes all weights instead.

Restartability: each stage checkpoints every `save_steps` steps and every `save_every_s` seconds into the
run's work folder, and logs its progress to the `past.sft` logger; running the same
command again resumes the unfinished stage from its last *complete* checkpoint (one whose
`trainer_state.json`, written last, exists) and skips a stage whose merged model is already published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from past.fields import BF16_HELP, LRScheduler, build_recipe, opt as _f, overrides_model, recipe_dataclass, resolve_bf16
from past.memory import PeakRSS
from past.keys import content_key
from past.corpus import SPLIT_BY, Corpus, QAPair, load_corpus, split_qa, write_splits
from past.errors import PastError
from past.models import MANIFEST, model_id, publish_dir, staging_dir, verify_model_dir, write_manifest




@recipe_dataclass
class SFTRecipe:
    use_lora: bool = _f(True, "LoRA adapters merged at the end of each stage; False = full fine-tuning.")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_targets: str = _f("all-linear", "PEFT target_modules: `all-linear` or comma-separated module names.")
    epochs_memorize: float = _f(3.0, "Stage 1 epochs over the documents (+ implications).")
    epochs_qa: float = _f(3.0, "Stage 2 epochs over the training QA.")
    lr_memorize: float = _f(2e-4, "Stage 1 learning rate (LoRA scale; ~2e-5 for full fine-tuning).")
    lr_qa: float = _f(2e-4, "Stage 2 learning rate.")
    lr_scheduler: LRScheduler = _f("linear", "transformers lr scheduler type for both stages.")
    warmup: float = _f(0.0, "Warm-up: a float in [0, 1) is a fraction of the steps, a whole number ≥ 1 a step count.")
    batch_size: int = _f(8, "Stage 2: QA pairs per device batch.")
    batch_size_memorize: int = _f(1, "Stage 1: packed max_length blocks per device batch. A small corpus is only a "
                                  "few blocks, so a big batch gives it almost no optimizer steps per epoch.")
    micro_batch_memorize: int = _f(1, "Stage 1: packed blocks per forward pass; `batch_size_memorize` is reached by "
                                   "gradient accumulation, so the update is the same. TRL trains a packed batch as "
                                   "one padding-free row, so memory grows with (micro-batch × max_length)² "
                                   "(docs/BENCHMARKS.md: SFT memory). Operational: not in the key.")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    max_length: int = _f(512, "Tokens per packed block (stage 1) and per QA example (stage 2).")
    chunk_overlap: int = _f(64, "Stage 1: tokens shared by consecutive windows of a document longer than max_length "
                            "(at most max_length/4 is used).")
    min_steps_memorize: int = _f(0, "Stage 1: at least this many optimizer steps, whatever the epochs give.")
    min_steps_qa: int = _f(60, "Stage 2: at least this many optimizer steps (small QA sets need many epochs).")
    replay_examples: int = _f(48, "Stage 2: general prompts answered by the base model itself and trained with the QA "
                              "(self-synthesized rehearsal against forgetting, `past.replay`); 0 = off.")
    replay_max_tokens: int = _f(96, "Stage 2: longest base-model answer to a rehearsal prompt, in tokens.")
    replay_memorize: bool = _f(False, "Stage 1 also trains the same rehearsal pairs, chat-rendered, packed with the "
                               "documents: on SmolLM2-135M stage 1 kept 58 of the base's 69/100 general prompts with "
                               "it, 11-15 without (docs/BENCHMARKS.md, E10).")
    check_train_qa: int = _f(32, "Training check: training questions asked closed-book after stage 2 (0 = off).")
    eval_fraction: float = _f(0.2, "Share of documents (or questions, see split_by) held out for the eval gate.")
    split_by: str = _f("document", "Held-out unit: `document` (its QA never trained), `question`, or `fact` (a "
                       "held-out question's fact is also asked by another training question; past.corpus.split_qa).")
    seed: int = _f(0, "Seed of the split, LoRA init and data order.")
    save_steps: int = _f(50, "Checkpoint every N optimizer steps (resume point after a crash).")
    save_total_limit: int = _f(2, "Checkpoints kept per stage.")
    save_every_s: float = _f(300.0, "Also checkpoint when this many seconds passed since the last one (0 = off): "
                             "with ~60 s steps, `save_steps` alone let a 21-step stage end with no checkpoint.")
    max_steps_memorize: int = _f(-1, "Cap stage 1 at N steps (overrides epochs when > 0; tests, benchmarks).")
    max_steps_qa: int = _f(-1, "Cap stage 2 at N steps (overrides epochs when > 0).")
    skip_memorize: bool = _f(False, "Skip stage 1 (QA-only SFT).")
    mix_qa: bool = _f(False, "Stage 1 also trains the training-side QA, chat-rendered, packed with the documents "
                      "(mixed training, Allen-Zhu & Li 2023; a departure from the paper's two stages). Held-out QA "
                      "never enters stage 1.")
    bf16: bool | None = _f(None, BF16_HELP)
    processes: int = _f(1, "Training processes per stage: N > 1 runs each stage's training under `accelerate launch "
                        "--multi_gpu --num_processes N` (DDP: NCCL on GPUs, gloo on CPU; past.launch); the effective "
                        "batch is then N × batch × grad_accum. In the key only when > 1.")

    @classmethod
    def from_settings(cls, settings, **overrides) -> "SFTRecipe":
        """The recipe from the settings (the `sft` section, `seed`), then a run's overrides (None = not given)."""
        return build_recipe(cls, {"seed": settings.seed} | settings.sft.model_dump(exclude_none=True), overrides,
                            SFTError)

    def __post_init__(self) -> None:
        if self.max_length < 16:
            raise SFTError(f"recipe max_length {self.max_length} must be ≥ 16")
        if self.chunk_overlap < 0:
            raise SFTError(f"recipe chunk_overlap {self.chunk_overlap} must be ≥ 0")
        if self.split_by not in SPLIT_BY:
            raise SFTError(f"recipe split_by {self.split_by!r}: expected one of {SPLIT_BY}")
        if self.batch_size < 1 or self.batch_size_memorize < 1 or self.micro_batch_memorize < 1:
            raise SFTError("recipe batch_size, batch_size_memorize and micro_batch_memorize must be ≥ 1")
        for name in ("min_steps_memorize", "min_steps_qa", "check_train_qa", "replay_examples"):
            if getattr(self, name) < 0:
                raise SFTError(f"recipe {name} must be ≥ 0")
        if self.replay_memorize and not self.replay_examples:
            raise SFTError("recipe replay_memorize needs replay_examples > 0 (the pairs it rehearses)")
        if self.processes < 1 or self.lora_r < 1 or self.lora_alpha < 1:
            raise SFTError(f"recipe processes {self.processes}, lora_r {self.lora_r} and lora_alpha {self.lora_alpha} "
                           "must be ≥ 1")
        if not 0.0 < self.eval_fraction < 1.0 or not (self.lr_memorize > 0 and self.lr_qa > 0):
            raise SFTError(f"recipe eval_fraction {self.eval_fraction} must be in (0, 1), lr_memorize "
                           f"{self.lr_memorize} and lr_qa {self.lr_qa} > 0")

    def mixed_precision(self) -> bool:
        """Whether this machine trains in bf16 (`past.fields.resolve_bf16`)."""
        return resolve_bf16(self.bf16, SFTError)

    def key(self) -> dict:
        """The fields that change the trained model (checkpoint cadence does not)."""
        return {k: v for k, v in asdict(self).items() if k not in OPERATIONAL_FIELDS and not _default_absent(k, v)}

    def memorize_key(self) -> dict:
        """The fields that change the stage-1 model."""
        return {k: getattr(self, k) for k in MEMORIZE_FIELDS if not _default_absent(k, getattr(self, k))}


# fields added after keys were in use, with their default: left out of the key at that default, so every existing
# key (work folder, cache entry, candidate) stays what it was
ADDED_FIELDS = {"processes": 1, "mix_qa": False, "replay_memorize": False, "bf16": None}


def _default_absent(field: str, value) -> bool:
    return field in ADDED_FIELDS and value == ADDED_FIELDS[field]


OPERATIONAL_FIELDS = ("save_steps", "save_total_limit", "save_every_s", "micro_batch_memorize")
# what stage 1 depends on: changing a stage-2 field (its lr, steps, rehearsal, split) must not retrain stage 1
MEMORIZE_FIELDS = ("use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "epochs_memorize", "lr_memorize",
                   "lr_scheduler", "warmup", "batch_size_memorize", "grad_accum", "max_length", "chunk_overlap",
                   "min_steps_memorize", "max_steps_memorize", "seed", "processes", "mix_qa", "replay_memorize", "bf16")


class SFTError(PastError):
    """SFT could not start or finish (no QA, bad base model, output already taken)."""


SFTOverrides = overrides_model(SFTRecipe, "SFTOverrides")


# --- datasets ---------------------------------------------------------------------------------------------
def memorize_texts(corpus: Corpus, implications: dict[str, list[str]] | None = None) -> list[tuple[str, str, str]]:
    """Stage-1 texts as (source id, title, text): each document (title first unless it opens with a heading),
    then its teacher implications, if any."""
    texts = []
    for d in corpus.documents:
        texts.append((d.id, d.title, d.text if d.text.lstrip().startswith("#") else f"{d.title}\n\n{d.text}"))
        if implications and implications.get(d.id):
            texts.append((f"{d.id}#implications", d.title, f"{d.title}\n\n" + "\n".join(implications[d.id])))
    return texts


def memorize_rows(corpus: Corpus, tokenizer, max_length: int, overlap: int,
                  implications: dict[str, list[str]] | None = None) -> tuple[list[dict], dict]:
    """Stage-1 rows (pre-tokenized windows, none longer than max_length) and their coverage report."""
    from past.chunking import coverage, windows

    rows, corpus_tokens, covered, split_docs = [], 0, 0.0, 0
    for source, title, text in memorize_texts(corpus, implications):
        wins = windows(tokenizer, source, title, text, max_length, overlap)
        n = wins[-1].end
        rows += [{"input_ids": w.input_ids} for w in wins]
        corpus_tokens += n
        covered += coverage(wins, n) * n
        split_docs += len(wins) > 1
    report = {"corpus_tokens": corpus_tokens, "window_count": len(rows), "texts_split": split_docs,
              "coverage": round(covered / corpus_tokens, 6) if corpus_tokens else 1.0,
              "window_tokens": sum(len(r["input_ids"]) for r in rows)}
    return rows, report


def mixed_qa_rows(tokenizer, pairs: list[QAPair]) -> list[dict]:
    """Training QA as stage-1 rows: each pair rendered by the model's chat template, loss on every token."""
    rows = []
    for p in pairs:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p.question},
                                             {"role": "assistant", "content": p.answer}], tokenize=False)
        rows.append({"input_ids": tokenizer(ids, add_special_tokens=False)["input_ids"]})
    return rows


def qa_examples(pairs: list[QAPair]) -> list[dict]:
    """TRL conversational prompt-completion rows: loss falls on the assistant answer only."""
    return [{"prompt": [{"role": "user", "content": p.question}],
             "completion": [{"role": "assistant", "content": p.answer}]} for p in pairs]


# --- checkpoints ------------------------------------------------------------------------------------------
def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """Highest `checkpoint-N` whose trainer_state.json exists (the Trainer writes it last)."""
    best, best_step = None, -1
    for p in Path(ckpt_dir).glob("checkpoint-*") if Path(ckpt_dir).is_dir() else []:
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "trainer_state.json").is_file() and int(m.group(1)) > best_step:
            best, best_step = p, int(m.group(1))
    return best


def drop_partial_checkpoints(ckpt_dir: Path, keep: Path | None) -> None:
    """Delete checkpoints newer than `keep`: half-written by a run killed mid-save (only call before training)."""
    keep_step = _step_of(keep) if keep is not None else -1
    for p in Path(ckpt_dir).glob("checkpoint-*") if Path(ckpt_dir).is_dir() else []:
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and int(m.group(1)) > keep_step:
            shutil.rmtree(p, ignore_errors=True)


# --- one stage --------------------------------------------------------------------------------------------
log = logging.getLogger("past.sft")  # `past up` forwards the `past` loggers into the Prefect run log


def _progress_callback(name: str, save_every_s: float):
    """A log line about every 5 % of a stage (step, loss, s/step, ETA), and a checkpoint every `save_every_s`:
    a 20-minute stage is never silent in the Prefect UI, and a crash loses minutes, not the stage."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = self.last_save = time.monotonic()
            self.loss: float | None = None
            self.first_step = 0

        def on_train_begin(self, args, state, control, **kw):
            self.first_step = state.global_step  # > 0 after a resume
            log.info(f"sft {name}: {state.max_steps} steps" + (f", resuming at {state.global_step}" if state.global_step else ""))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_save(self, args, state, control, **kw):
            self.last_save = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            now, step, total = time.monotonic(), state.global_step, max(state.max_steps, 1)
            done = step - self.first_step
            if step == total or step % max(1, total // 20) == 0:
                per = (now - self.t0) / max(done, 1)
                loss = f", loss {self.loss:.3f}" if self.loss is not None else ""
                log.info(f"sft {name}: step {step}/{total}{loss}, {per:.1f} s/step, ~{per * (total - step):.0f} s left")
            if save_every_s > 0 and now - self.last_save >= save_every_s and step < total:
                control.should_save = True
            return control

    return Progress()


def train_stage(name: str, model_dir: Path, rows: list[dict], recipe: SFTRecipe, stage_dir: Path,
                final_dir: Path, epochs: float, lr: float, max_steps: int, packing: bool,
                manifest_extra: dict | None = None, progress: bool = True, save_model: bool = True,
                min_steps: int = 0, after_train=None, extra_metrics: dict | None = None,
                batch_size: int | None = None) -> dict:
    """Train one stage from `model_dir` and publish the merged model to `final_dir`. Returns its metrics.

    Steps: `max_steps` when > 0, else max(epochs × steps per epoch, `min_steps`). `after_train(model, tok)`
    may add metrics (the training check) before the model is saved. With `recipe.processes` > 1 the training
    itself runs in that many DDP processes (past.launch); the check, the manifest and the publish stay here."""
    if not rows:
        raise SFTError(f"stage {name}: no training examples")
    stage_dir.mkdir(parents=True, exist_ok=True)
    fit = dict(name=name, model_dir=str(model_dir), rows=rows, stage_dir=str(stage_dir), epochs=epochs, lr=lr,
               max_steps=max_steps, packing=packing, min_steps=min_steps, batch_size=batch_size or recipe.batch_size,
               progress=progress)
    launched = None  # rank 0's saved, merged model folder when the training ran under accelerate
    if recipe.processes > 1:
        from past.launch import fit_launched

        launched, metrics = fit_launched(fit, recipe)
        model = tok = None
        if after_train is not None:  # the check needs the model in memory; publishing does not
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(launched, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(launched)
    else:
        trainer, tok, metrics = fit_stage(recipe=recipe, **fit)
        model = trainer.model
    metrics |= extra_metrics or {}
    if after_train is not None:
        metrics |= after_train(model, tok)
    if save_model:
        tmp = staging_dir(final_dir)
        try:
            if launched is not None:  # already merged and saved by rank 0: move its files, do not save again
                for f in launched.iterdir():
                    shutil.move(str(f), tmp / f.name)
            else:
                (model.merge_and_unload() if recipe.use_lora else model).save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
            write_manifest(tmp, source=f"past-sft:{name}", base_model=str(model_dir), sft=metrics,
                           **(manifest_extra or {}))
            publish_dir(tmp, final_dir, replace=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    (stage_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def fit_stage(name: str, model_dir: str, rows: list[dict], recipe: SFTRecipe, stage_dir: str, epochs: float,
              lr: float, max_steps: int, packing: bool, min_steps: int, batch_size: int, progress: bool):
    """The training of one stage (TRL SFTTrainer, LoRA when the recipe says so) -> (trainer, tokenizer, metrics).

    Runs in this process, or in each of N processes under `accelerate launch` (the trainer then does DDP, and
    only rank 0 touches checkpoints it did not write itself)."""
    import math
    import os

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    ckpt_dir = Path(stage_dir) / "checkpoints"
    resume = last_complete_checkpoint(ckpt_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        drop_partial_checkpoints(ckpt_dir, resume)
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_config = None
    if recipe.use_lora:
        from peft import LoraConfig

        targets = recipe.lora_targets if recipe.lora_targets == "all-linear" else \
            [t.strip() for t in recipe.lora_targets.split(",") if t.strip()]
        peft_config = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                                 target_modules=targets, task_type="CAUSAL_LM")
    # a packed batch is one padding-free row (block-diagonal attention over batch × max_length tokens), so stage 1
    # runs it as micro-batches and accumulates: the same update, a fraction of the activation memory
    micro = _micro_batch(batch_size, recipe.micro_batch_memorize) if packing else batch_size
    accum = recipe.grad_accum * (batch_size // micro)
    args = SFTConfig(
        output_dir=str(ckpt_dir), num_train_epochs=epochs, max_steps=max_steps if max_steps > 0 else -1,
        learning_rate=lr, lr_scheduler_type=recipe.lr_scheduler, warmup_steps=recipe.warmup if recipe.warmup < 1 else int(recipe.warmup),
        per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
        max_length=recipe.max_length, packing=packing, dataset_text_field="text",
        completion_only_loss=None if packing else True,
        use_cpu=not cuda, bf16=recipe.mixed_precision(),
        gradient_checkpointing=False,  # ~2x slower on CPU; these models fit without it
        report_to="none", logging_steps=1, save_strategy="steps", save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit, seed=recipe.seed, data_seed=recipe.seed,
        include_num_input_tokens_seen="non_padding", disable_tqdm=not progress, dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_config, callbacks=[_progress_callback(name, recipe.save_every_s)])
    if packing and "input_ids" in rows[0]:  # pre-tokenized windows: packing must not have dropped a token
        given = sum(len(r["input_ids"]) for r in rows)
        packed = sum(len(x) for x in trainer.train_dataset["input_ids"])
        if packed != given:
            raise SFTError(f"stage {name}: packing kept {packed} of {given} tokens; refusing to train on a "
                           "silently truncated corpus")
    world = trainer.args.world_size  # DDP: every optimizer step takes a batch on each process
    per_epoch = max(1, math.ceil(len(trainer.train_dataset) / (batch_size * recipe.grad_accum * world)))
    planned = max_steps if max_steps > 0 else max(math.ceil(epochs * per_epoch), min_steps)
    trainer.args.max_steps = planned  # read by train(); epochs alone give small QA sets almost no steps
    if not progress:  # disable_tqdm swaps the bars for a per-step dict printer; quiet means quiet
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # the last step log's timer stops before the end-of-training checkpoint save, so it is training alone
    step_logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" in h]
    runtime = float(step_logs[-1]["train_runtime"] if step_logs else out.metrics.get("train_runtime", wall))
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    metrics = {
        "stage": name, "steps": int(trainer.state.global_step), "resumed_from_step": _step_of(resume),
        "examples": len(rows), "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None, "loss_curve": losses, "tokens": tokens,
        "wall_s": round(wall, 3), "train_runtime_s": runtime,
        # this session's tokens over this session's time (after a resume, `tokens` also counts the old run)
        "tokens_per_s": round(float(step_logs[-1].get("train_tokens_per_second", 0.0)), 1) if step_logs
        else (round(tokens / runtime, 1) if runtime > 0 else None), "use_lora": recipe.use_lora,
        "planned_steps": planned, "steps_per_epoch": per_epoch, "peak_rss_gb": rss.peak_gb,
        **({"micro_batch": micro, "accumulation": accum} if accum > 1 else {}),
        **({"processes": world} if world > 1 else {}),
    }
    return trainer, tok, metrics


def _micro_batch(batch: int, most: int) -> int:
    """The largest divisor of `batch` that is at most `most`: micro-batches × accumulation = the batch exactly."""
    return max(d for d in range(1, min(batch, most) + 1) if batch % d == 0)


def _training_check(train_qa: list[QAPair], recipe: SFTRecipe, tool_ids: frozenset[str] = frozenset()):
    """after_train hook: closed-book recall on a seeded sample of the stage-2 training questions. A tool task's
    pair (id in `tool_ids`) is right only when the reply makes its call: same API, same arguments."""
    def check(model, tok) -> dict:
        if recipe.check_train_qa <= 0:
            return {}
        from past.recall import recall
        from past.scoring import is_correct
        from past.tools import same_call

        def score(answer: str, p: QAPair) -> bool:
            return same_call(answer, p.answer) if p.id in tool_ids else is_correct(answer, p.answer)

        sample = sorted(train_qa, key=lambda p: hashlib.sha256(f"{recipe.seed}:{p.id}".encode()).hexdigest())
        return {"train_recall": recall(model, tok, sample[: recipe.check_train_qa], score=score)}
    return check


def _step_of(ckpt: Path | None) -> int:
    return int(ckpt.name.split("-")[1]) if ckpt is not None else 0


def _done(model_dir: Path, run_key: str) -> bool:
    if not (model_dir / MANIFEST).is_file() or verify_model_dir(model_dir):
        return False
    return json.loads((model_dir / MANIFEST).read_text()).get("run_key") == run_key


# --- both stages ------------------------------------------------------------------------------------------
def run_key(corpus: Corpus, base_model: Path, recipe: SFTRecipe, qa: list[QAPair],
            implications: dict[str, list[str]] | None, demos: list[dict] | None = None) -> str:
    """What makes two runs "the same command": corpus, base model, recipe, QA, implications (and demos)."""
    extra = {"demos": demos} if demos else {}  # absent when unused: every existing key stays what it was
    return content_key(corpus=corpus.id, base=model_id(base_model), recipe=recipe.key(), qa=sorted(p.id for p in qa),
                       impl=implications or {}, **extra)


def tool_qa(corpus: Corpus) -> list[QAPair]:
    """A tool corpus's tasks as stage-2 pairs: the request and its *first call* only (the authors' stage 2);
    reading the observation and finishing is what GRPO, or the grafted skill vector, must add."""
    from past.tools import episode_prompt, first_call_text

    return [QAPair(id=t.id, question=episode_prompt(t.request), answer=first_call_text(t)) for t in corpus.tool_tasks]


def _corpus_qa(corpus: Corpus, qa: list[QAPair] | None, where: Path) -> list[QAPair]:
    """The corpus's own QA and tool tasks plus any extra (e.g. teacher-generated) pairs, each id once."""
    own = list(corpus.qa) + tool_qa(corpus)
    ids = {p.id for p in own}
    qa = own + [p for p in qa or [] if p.id not in ids]
    if not qa:
        raise SFTError(f"{where}: no QA pairs; add qa.jsonl or run `past corpus generate-qa`")
    return qa


def _replay(base_model: Path, recipe: SFTRecipe, work: Path) -> list[dict]:
    """The rehearsal pairs both stages train (`past.replay`), cached in the run's work folder."""
    from past.replay import replay_pairs

    return replay_pairs(Path(base_model), recipe.replay_examples, recipe.replay_max_tokens, work / "replay")


def run_memorize(corpus_path: Path, base_model: Path, recipe: SFTRecipe, work_dir: Path,
                 implications: dict[str, list[str]] | None = None, progress: bool = True,
                 qa: list[QAPair] | None = None) -> dict:
    """Stage 1 alone -> {"model": <work>/stage1/model, "metrics", "run_key"}; skipped if already done.
    With `recipe.mix_qa`, the training side of the QA (corpus + `qa`, split exactly as stage 2 will split it)
    is trained here too; with `recipe.replay_memorize`, so are stage 2's rehearsal pairs (`past.replay`)."""
    corpus = load_corpus(corpus_path)
    mixed: list[QAPair] = []
    if recipe.mix_qa:
        mixed = split_qa(_corpus_qa(corpus, qa, Path(corpus_path)), recipe.eval_fraction, recipe.seed,
                         recipe.split_by)[0]
    replay = _replay(base_model, recipe, Path(work_dir)) if recipe.replay_memorize else []
    key = content_key(stage="memorize", corpus=corpus.id, base=model_id(base_model), recipe=recipe.memorize_key(),
                      impl=implications or {}, **({"mixed": sorted(p.id for p in mixed)} if mixed else {}),
                      **({"replay": replay} if replay else {}))  # the pairs themselves: a changed prompt is a new key
    s1 = Path(work_dir) / "stage1"
    if _done(s1 / "model", key):
        m1 = json.loads((s1 / "metrics.json").read_text()) | {"skipped": True}
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base_model)
        rows, cover = memorize_rows(corpus, tok, recipe.max_length, min(recipe.chunk_overlap, recipe.max_length // 4),
                                    implications)
        rows += mixed_qa_rows(tok, mixed + [QAPair(id=f"replay-{i}", question=r["prompt"], answer=r["answer"])
                                            for i, r in enumerate(replay)])
        m1 = train_stage("memorize", Path(base_model), rows, recipe, s1, s1 / "model", recipe.epochs_memorize,
                         recipe.lr_memorize, recipe.max_steps_memorize, packing=True,
                         manifest_extra={"run_key": key, "corpus_id": corpus.id}, progress=progress,
                         min_steps=recipe.min_steps_memorize, batch_size=recipe.batch_size_memorize, extra_metrics={
                             "coverage": cover["coverage"], "corpus_tokens": cover["corpus_tokens"],
                             "windows": cover["window_count"], "texts_split": cover["texts_split"],
                             "implications": sum(len(v) for v in (implications or {}).values()),
                             **({"mixed_qa": len(mixed)} if mixed else {}),
                             **({"replay": len(replay)} if replay else {})})
    return {"model": s1 / "model", "metrics": m1, "run_key": key}


def run_qa(corpus_path: Path, stage1_model: Path, base_model: Path, recipe: SFTRecipe, work_dir: Path,
           out_dir: Path, qa: list[QAPair] | None = None, overwrite: bool = False, progress: bool = True,
           demos: list[dict] | None = None) -> dict:
    """Split the QA, train stage 2 from `stage1_model` on the train side, publish the model to `out_dir`.
    `demos`: extra TRL conversational rows trained beside the QA (multi-turn prompts allowed; e.g. whole tool
    episodes, past.tools.finish_demo), never split off for the gate.

    Returns {"model", "eval_split", "train_split", "metrics": {"memorize"?, "qa", "split", ...}, "run_key"}.
    `base_model` is recorded in the manifest (pass the stage-1 model itself when stage 1 was skipped).
    """
    corpus = load_corpus(corpus_path)
    qa = _corpus_qa(corpus, qa, Path(corpus_path))
    work, out_dir, stage1_model = Path(work_dir), Path(out_dir), Path(stage1_model)
    work.mkdir(parents=True, exist_ok=True)
    split = write_splits(corpus, work / "splits", qa, recipe.eval_fraction, recipe.seed, recipe.split_by)
    result = {"model": out_dir, "eval_split": work / "splits" / "eval.jsonl",
              "train_split": work / "splits" / "train.jsonl"}
    train_ids = {json.loads(line)["id"] for line in result["train_split"].read_text().splitlines()}
    train_qa = [p for p in qa if p.id in train_ids]
    key = content_key(stage="qa", corpus=corpus.id, start=model_id(stage1_model), recipe=recipe.key(),
                      qa=sorted(p.id for p in qa), **({"demos": demos} if demos else {}))
    if _done(out_dir, key):
        return result | {"metrics": json.loads((out_dir / MANIFEST).read_text())["metrics"], "run_key": key}
    if out_dir.exists() and not overwrite:
        raise SFTError(f"{out_dir} already exists (from another run); pass overwrite/--overwrite to replace it")

    metrics: dict = {"run_key": key, "corpus_id": corpus.id, "work_dir": str(work), "split": split}
    s1_manifest = json.loads((stage1_model / MANIFEST).read_text()) if (stage1_model / MANIFEST).is_file() else {}
    if str(s1_manifest.get("source", "")) == "past-sft:memorize":
        metrics["memorize"] = s1_manifest.get("sft")
    s2, tmp_final = work / "stage2", work / "stage2-model"  # trained here, then published with the full manifest
    if _done(tmp_final, key):
        m2 = json.loads((s2 / "metrics.json").read_text()) | {"skipped": True}
    else:
        rows = qa_examples(train_qa) + list(demos or [])
        if demos:
            metrics["demos"] = len(demos)
        if recipe.replay_examples:  # rehearsal: the base model's own answers to general prompts (past.replay)
            t0 = time.perf_counter()
            replay = _replay(base_model, recipe, work)
            rows += [{"prompt": [{"role": "user", "content": r["prompt"]}],
                      "completion": [{"role": "assistant", "content": r["answer"]}]} for r in replay]
            metrics["replay"] = {"examples": len(replay), "seconds": round(time.perf_counter() - t0, 2)}
        m2 = train_stage("qa", stage1_model, rows, recipe, s2, tmp_final, recipe.epochs_qa,
                         recipe.lr_qa, recipe.max_steps_qa, packing=False,
                         manifest_extra={"run_key": key, "corpus_id": corpus.id}, progress=progress,
                         min_steps=recipe.min_steps_qa,
                         after_train=_training_check(train_qa, recipe, frozenset(t.id for t in corpus.tool_tasks)))
    metrics["qa"] = m2
    stage = staging_dir(out_dir)
    try:
        for p in tmp_final.iterdir():
            if p.name != MANIFEST:
                shutil.copy2(p, stage / p.name)
        write_manifest(stage, source="past-sft", base_model=str(base_model), stage1_model=str(stage1_model),
                       run_key=key, corpus_id=corpus.id, recipe=recipe.key(), metrics=metrics)
        publish_dir(stage, out_dir, replace=out_dir.exists())
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return result | {"metrics": metrics, "run_key": key}


def logged_metrics(metrics: dict) -> tuple[dict[str, float], dict[str, list[float]]]:
    """What an adaptation's MLflow run gets from `run_qa`'s metrics: the numeric per-stage metrics as flat
    `sft_<stage>_<name>` keys (plus the split, rehearsal and training check), and both stages' loss curves."""
    flat = {f"sft_{stage}_{k}": v for stage in ("memorize", "qa") for k, v in (metrics.get(stage) or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    split = metrics.get("split") or {}
    if "eval_facts_also_trained" in split:  # what the held-out items measure (split_by): paraphrases or unseen facts
        flat |= {"split_eval": split["eval"], "split_eval_facts_also_trained": split["eval_facts_also_trained"]}
    if metrics.get("replay"):
        flat["sft_replay_examples"] = metrics["replay"]["examples"]
    check = (metrics.get("qa") or {}).get("train_recall")
    if check and check.get("n"):
        flat |= {"train_recall": check["accuracy"], "train_recall_lower": check["lower"]}
    curves = {f"sft_{stage}_loss": list((metrics.get(stage) or {}).get("loss_curve") or [])
              for stage in ("memorize", "qa")}
    return flat, curves


def run_sft(corpus_path: Path, out_dir: Path, base_model: Path, recipe: SFTRecipe, work_dir: Path | None = None,
            qa: list[QAPair] | None = None, implications: dict[str, list[str]] | None = None,
            runs_dir: Path = Path(".past/runs"), overwrite: bool = False, progress: bool = True,
            demos: list[dict] | None = None) -> dict:
    """Stage 1 then stage 2 on `corpus_path`; the merged result lands in `out_dir`. Returns all metrics.

    QA comes from the corpus's own qa.jsonl, else from `qa` (e.g. teacher-generated). The train/eval split
    is written to `<work>/splits/` (eval.jsonl feeds the gate) and only the train side reaches stage 2.
    """
    corpus = load_corpus(corpus_path)
    qa = _corpus_qa(corpus, qa, Path(corpus_path))
    base_model = Path(base_model)
    key = run_key(corpus, base_model, recipe, qa, implications, demos)
    work = Path(work_dir) if work_dir else Path(runs_dir) / f"sft-{corpus.id[:12]}-{key}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipe.json").write_text(json.dumps({"run_key": key, "corpus_id": corpus.id, "base_model":
                                                  str(base_model), "recipe": recipe.key()}, indent=2) + "\n")
    t0 = time.perf_counter()
    stage1 = base_model
    m1 = None
    if not recipe.skip_memorize:
        r1 = run_memorize(corpus_path, base_model, recipe, work, implications, progress=progress, qa=qa)
        stage1, m1 = r1["model"], r1["metrics"]
    r2 = run_qa(corpus_path, stage1, base_model, recipe, work, out_dir, qa=qa, overwrite=overwrite,
                progress=progress, demos=demos)
    metrics = r2["metrics"]
    if m1 is not None and m1.get("skipped"):  # report this call's view: stage 1 was not redone
        metrics = metrics | {"memorize": m1}
    metrics.setdefault("wall_s", round(time.perf_counter() - t0, 3))
    return metrics


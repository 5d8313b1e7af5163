"""Multi-turn GRPO rollouts for tool corpora: each completion is one whole closed-book episode.

TRL's GRPOTrainer samples one turn per prompt. Its own multi-turn support (`tools=`, `environment_factory`)
renders the tool list into the prompt through the chat template, which the closed-book setting forbids,
and expects the model's native tool-call format. So we hand it a `rollout_func` (TRL's hook, marked
experimental there). For every prompt row it plays the episode with the policy itself, as the authors'
pipeline does (Stanleytowne/Search-R1: ReAct turns against a simulated API server):

    sample a turn → parse `Action:` / `Action Input:` → the simulator answers → append the observation
    → sample the next turn ... until `Action: Finish`, an unparseable turn, or `max_turns`

and returns the token sequence the policy saw:

    completion = turn_1 · obs_1 · turn_2 · obs_2 · …      env_mask = 1 on sampled tokens, 0 on the rest

so the GRPO loss covers only what the model wrote; the observations (and the chat template's separators
around them) are context. The next turn conditions on exactly these ids, not on a re-templated
conversation, so the sequence trained on is the sequence sampled. The separators come from the model's own
chat template, rendered once. Sampling uses the trainer's generation config (temperature, top-p/k) and
records the processed log-probabilities of the sampled tokens, as TRL's own generation does.

The episode's metrics and shaped reward (past.tools.episode_metrics / episode_reward) travel to the reward
functions as the `episode` column (past.rewards: `episode`, `episode_pass`, `episode_finish`).

Departure from the paper: no `Thought:` line (see past.tools), and at most `max_turns` turns of
`max_completion_length` tokens each (CPU budgets).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

from past.tools import (Episode, EpisodeWeights, Simulator, ToolSpec, ToolTask, advance, episode_metrics, episode_prompt,
                        episode_reward)

_A, _O = "\x00assistant-turn\x00", "\x00observation\x00"  # markers no real text contains
TURN_TOKENS = 48  # least tokens per turn in a tool GRPO round: a call with its JSON arguments is ~20-30 tokens


@dataclass
class _Row:
    task: ToolTask
    prompt_ids: list[int]
    messages: list[dict]
    ep: Episode = field(default_factory=Episode)
    completion: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    live: bool = True

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.completion


def grpo_items(tasks: list[ToolTask]) -> list[dict]:
    """train_grpo's question/answer items for tool tasks: the episode prompt the rollout plays."""
    return [{"question": episode_prompt(t.request), "answer": t.answer} for t in tasks]


class ToolRollout:
    """`rollout_func(prompts, trainer)` for TRL's GRPOTrainer over one tool corpus's tasks."""

    def __init__(self, spec: ToolSpec, tasks: list[ToolTask], max_turns: int = 3,
                 weights: EpisodeWeights = EpisodeWeights()) -> None:
        by_prompt: dict[str, ToolTask] = {}
        for t in tasks:
            p = episode_prompt(t.request)
            if p in by_prompt and by_prompt[p].answer != t.answer:
                raise ValueError(f"two tool tasks share the request {t.request!r} with different answers")
            by_prompt[p] = t
        if max_turns < 1:
            raise ValueError(f"max_turns must be ≥ 1, got {max_turns}")
        self.tasks, self.sim, self.max_turns, self.weights = by_prompt, Simulator(spec), max_turns, weights
        self.spec = spec
        self.episodes = 0  # played so far (for tests and logs)

    def describe(self) -> dict:
        """Everything that makes this rollout, as JSON: each launched GRPO process rebuilds it (`from_description`)."""
        from dataclasses import asdict

        return {"spec": self.spec.model_dump(mode="json"), "max_turns": self.max_turns, "weights": asdict(self.weights),
                "tasks": [t.model_dump(mode="json") for t in self.tasks.values()]}

    @classmethod
    def from_description(cls, d: dict) -> "ToolRollout":
        return cls(ToolSpec.model_validate(d["spec"]), [ToolTask.model_validate(t) for t in d["tasks"]],
                   d["max_turns"], EpisodeWeights(**d["weights"]))

    # -- chat-template plumbing ----------------------------------------------------------------------------
    def _separators(self, tok) -> tuple[str, str]:
        """What the template puts after an assistant turn and before/after a user observation."""
        text = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": _A},
                                        {"role": "user", "content": _O}], tokenize=False, add_generation_prompt=True)
        after = text[text.index(_A) + len(_A):]
        pre, post = after.split(_O)
        return pre, post

    def _observation_ids(self, tok, observation: str, model_ended_turn: bool) -> list[int]:
        pre, post = self._seps
        if model_ended_turn and tok.eos_token and pre.startswith(tok.eos_token):
            pre = pre[len(tok.eos_token):]  # the sampled EOS already closed the turn (and is trained on)
        return tok(pre + observation + post, add_special_tokens=False)["input_ids"]

    # -- sampling ------------------------------------------------------------------------------------------
    def _sample(self, trainer, contexts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        """One turn for each context: sampled ids (through the first EOS) and their log-probabilities."""
        import torch

        tok, model = trainer.processing_class, trainer.model
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(c) for c in contexts)
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts])
        attn = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
        gen = copy.deepcopy(trainer.generation_config)
        gen.max_new_tokens, gen.output_scores, gen.return_dict_in_generate = trainer.args.max_completion_length, True, True
        # bf16 when the recipe trains in it (past.grpo); a player outside a trainer (benches) has no accelerator
        cast = trainer.accelerator.autocast() if hasattr(trainer, "accelerator") else contextlib.nullcontext()
        with torch.no_grad(), cast:
            out = model.generate(input_ids=ids.to(model.device), attention_mask=attn.to(model.device), generation_config=gen)
        seq = out.sequences[:, width:]
        logps = torch.stack(out.scores, dim=1).float().log_softmax(-1).gather(-1, seq.unsqueeze(-1)).squeeze(-1)
        res = []
        for row, lp in zip(seq.tolist(), logps.tolist()):
            end = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            res.append((row[:end], lp[:end]))
        return res

    # -- the rollout ---------------------------------------------------------------------------------------
    def __call__(self, prompts: list, trainer) -> dict[str, Any]:
        tok = trainer.processing_class
        if not hasattr(self, "_seps"):
            self._seps = self._separators(tok)
        rows = []
        for p in prompts:
            content = p[-1]["content"] if isinstance(p, list) else str(p)
            task = self.tasks.get(content)
            if task is None:
                raise ValueError(f"rollout prompt {content[:80]!r} is no tool task's episode prompt "
                                 "(build the GRPO items with past.tool_rollout.grpo_items)")
            messages = [{"role": "user", "content": content}]  # closed-book: request + protocol, no API list
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            rows.append(_Row(task, tok(text, add_special_tokens=False)["input_ids"], messages))
        for turn in range(self.max_turns):
            live = [r for r in rows if r.live]
            if not live:
                break
            for r, (ids, lps) in zip(live, self._sample(trainer, [r.context for r in live])):
                r.completion += ids
                r.logprobs += lps
                r.mask += [1] * len(ids)
                goes_on = advance(r.ep, r.messages, tok.decode(ids, skip_special_tokens=True), self.sim)
                if goes_on and turn + 1 < self.max_turns:
                    obs = self._observation_ids(tok, r.messages[-1]["content"], bool(ids) and ids[-1] == tok.eos_token_id)
                    r.completion += obs
                    r.logprobs += [0.0] * len(obs)
                    r.mask += [0] * len(obs)
                else:
                    r.live = False
        self.episodes += len(rows)
        episodes = [episode_metrics(r.ep, r.task) | {"reward": episode_reward(r.ep, r.task, self.weights),
                                                      "turns": float(len(r.ep.steps))} for r in rows]
        return {"prompt_ids": [r.prompt_ids for r in rows], "completion_ids": [r.completion for r in rows],
                "logprobs": [r.logprobs for r in rows], "env_mask": [r.mask for r in rows], "episode": episodes}

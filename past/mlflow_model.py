"""The MLmodel file every registered candidate carries, so `mlflow.pyfunc.load_model("models:/NAME@champion")`
loads it like any MLflow model (a chat signature: a `messages` column of {role, content} turns in, the next
assistant reply out).

Why not `mlflow.transformers.log_model`: it writes the weights again into the run's artifact store, a second
copy of every candidate (0.5 GB at 135M, 2 GB at 1B in bf16) for a folder that is already content-addressed,
verified and never rewritten. Instead the MLmodel is a pyfunc `loader_module` model written *in place* beside
the weights (outside their checksum manifest, like the model card), with `data: .` and this module as its
loader: the registered version's source stays the folder itself (against an MLflow HTTP server, which refuses
in-place sources, the folder is uploaded once as run artifacts: past.registry), and MLflow's own loader (which copies the
folder to a local path first, as it does for any model URI) finds weights, tokenizer and chat template there.
The loader needs `past` importable, the same as serving it with `past serve`.
"""

from __future__ import annotations

from pathlib import Path

MLMODEL = "MLmodel"


def chat_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    turn = Object([Property("role", "string"), Property("content", "string")])
    return ModelSignature(inputs=Schema([ColSpec(Array(turn), "messages")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 64)]))


def write_mlmodel(model_dir: Path) -> Path:
    """Write `MLmodel` (pyfunc, loader `past.mlflow_model`, chat signature) into a finished model folder."""
    import mlflow.pyfunc
    from mlflow.models import Model

    from past.corpus import atomic_write

    m = Model(signature=chat_signature())
    mlflow.pyfunc.add_to_model(m, loader_module=__name__, data=".")
    path = Path(model_dir) / MLMODEL
    atomic_write(path, m.to_yaml())
    return path


class ChatModel:
    """What `mlflow.pyfunc.load_model` returns inside its PyFuncModel: greedy replies with transformers."""

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    def predict(self, model_input, params: dict | None = None) -> list[str]:
        from past.recall import replies

        chats = model_input["messages"] if hasattr(model_input, "columns") or isinstance(model_input, dict) \
            else model_input
        chats = [[{"role": t["role"], "content": t["content"]} for t in c] for c in list(chats)]
        return replies(self.model, self.tokenizer, chats, int((params or {}).get("max_new_tokens", 64)))


def _load_pyfunc(data_path: str) -> ChatModel:
    """MLflow's loader_module entry point: `data_path` is the local copy of the model folder."""
    return ChatModel(Path(data_path))

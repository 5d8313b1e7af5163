"""Answer scoring shared by the eval gate, the GRPO rule rewards and the method benchmark.

SQuAD-style normalisation (lower-case, strip punctuation and articles, collapse spaces), then:
exact match, token-F1, and "answer contained" (the normalised reference appears inside the prediction).
`is_correct` is the gate's rule when no judge is configured.
"""

from __future__ import annotations

import re
import string
from collections import Counter

# Token-F1 above which a short answer counts as correct. Not 0.5: a wrong number with the right unit
# ("12 seconds" for "5 seconds") scores exactly 0.5, and a model that learned only the answer format
# would pass (the method benchmark's first dev run did: 75% of paraphrase questions "correct", 6% exact match).
CORRECT_MIN_F1 = 0.6
# Names the correctness rule; part of every cache key over scores (the gate's champion cache): change the rule
# or the normalisation and bump the suffix, so old scores are never compared with new ones.
SCORING_RULE = f"squad-normalize;f1>={CORRECT_MIN_F1}|contains;v2"

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains(prediction: str, reference: str) -> float:
    ref = normalize(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize(prediction)} ")


def score_all(prediction: str, reference: str) -> dict[str, float]:
    return {
        "exact_match": exact_match(prediction, reference),
        "token_f1": token_f1(prediction, reference),
        "contains": contains(prediction, reference),
    }


def is_correct(prediction: str, reference: str) -> bool:
    """The judge-free correctness rule: token-F1 ≥ CORRECT_MIN_F1 or the reference contained."""
    return bool(prediction) and (token_f1(prediction, reference) >= CORRECT_MIN_F1 or contains(prediction, reference) == 1.0)

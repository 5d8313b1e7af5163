"""Fictional support-bot domains that no model has seen: products, policies and fixes with made-up names.

A domain is a list of products; each product has the same attributes (price, warranty, reset hold time, ...)
with random values. From it we write:
- documents: one support article per product stating all its facts in prose;
- rewrites: several re-phrasings of each article (the "implications" SEAL and the paper generate), because
  a small model only makes a fact extractable after seeing it in several phrasings;
- QA, in four kinds: `train` (the training phrasing, for a subset of attributes), `paraphrase` (the same
  facts asked differently: held out), `doc_only` (attributes that appear only in documents, never as QA:
  held out), `two_fact` (compare two products: held out; `distractor` names the wrong one).

Source and target domains draw product names from one pool without replacement, so they share no entities.
Everything is a pure function of the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

_SYL_A = ["zor", "quan", "vel", "bri", "tam", "kor", "nil", "fen", "dra", "sol", "mir", "pax", "lum", "tor",
          "gav", "ori", "hel", "cyn", "rav", "bex"]
_SYL_B = ["vex", "dle", "tra", "mo", "lix", "ran", "bo", "sen", "pha", "dor", "quin", "ta", "ver", "nox", "mel"]
_KINDS = ["Router", "Hub", "Speaker", "Camera", "Thermostat", "Lamp", "Scanner", "Tablet", "Keyboard", "Drone"]
_COLORS = ["teal", "amber", "crimson", "ivory", "slate", "olive", "violet", "copper"]
_CITIES = ["Tessaport", "Brisco", "Fendle", "Calyx", "Orrin", "Duvale", "Marrow", "Quessa"]

# attribute -> (value maker, sentence, train question, paraphrase question, alternative sentence for rewrites)
ATTRIBUTES: dict[str, tuple] = {
    "price": (lambda r: f"{r.randint(12, 95) * 10} credits", "The {p} costs {v}.",
              "How much does the {p} cost?", "What is the price of the {p}?", "A new {p} is sold for {v}."),
    "warranty": (lambda r: f"{r.choice([6, 9, 12, 18, 24, 30, 36])} months", "The {p} comes with a warranty of {v}.",
                 "How long is the warranty of the {p}?", "For how long is the {p} covered by warranty?", "Repairs of a {p} are free for {v} after purchase."),
    "reset": (lambda r: f"{r.randint(3, 25)} seconds", "To reset the {p}, hold the power button for {v}.",
              "How long must you hold the power button to reset the {p}?",
              "To factory-reset the {p}, how long do you press the power button?",
              "Pressing the power button of the {p} for {v} restores its factory settings."),
    "color": (lambda r: r.choice(_COLORS), "The status light of the {p} glows {v} when it needs an update.",
              "What color is the {p}'s status light when it needs an update?",
              "When the {p} needs an update, which color does its status light show?",
              "A {v} status light on the {p} means an update is waiting."),
    "factory": (lambda r: r.choice(_CITIES), "The {p} is assembled in the city of {v}.",
                "Where is the {p} assembled?", "In which city is the {p} built?", "Every {p} is built in {v}."),
    "code": (lambda r: f"E{r.randint(10, 99)}", "If the {p} overheats it shows error code {v}.",
             "Which error code does the {p} show when it overheats?",
             "What error code means the {p} is overheating?", "Error {v} on a {p} means it is too hot."),
}
TRAIN_ATTRS = ("price", "warranty", "reset", "color")  # asked in training QA
DOC_ONLY_ATTRS = ("factory", "code")  # stated only in documents

_REWRITES = [
    "Support note for the {p}: {facts}",
    "Frequently asked about the {p}. {facts}",
    "Quick facts ({p}): {facts}",
]


@dataclass
class Domain:
    name: str
    products: dict[str, dict[str, str]]  # product name -> attribute -> value
    qa: dict[str, list[dict]] = field(default_factory=dict)  # kind -> QA records

    def documents(self) -> list[dict]:
        return [{"id": _slug(p), "title": p, "text": f"# {p}\n\n" + " ".join(
            ATTRIBUTES[a][1].format(p=p, v=v) for a, v in attrs.items())} for p, attrs in self.products.items()]

    def rewrites(self, n: int = 3) -> dict[str, list[str]]:
        out = {}
        for p, attrs in self.products.items():
            # Alternate the two phrasings of each fact and rotate their order, so every rewrite differs.
            out[_slug(p)] = []
            for i, tpl in enumerate(_REWRITES[:n]):
                sentences = [ATTRIBUTES[a][1 if (i + j) % 2 else 4].format(p=p, v=v)
                             for j, (a, v) in enumerate(attrs.items())]
                out[_slug(p)].append(tpl.format(p=p, facts=" ".join(sentences[i:] + sentences[:i])))
        return out


def _slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def _names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    names = []
    while len(names) < n:
        nm = f"{rng.choice(_SYL_A).capitalize()}{rng.choice(_SYL_B)} {rng.choice(_KINDS)}"
        if nm not in taken:
            taken.add(nm)
            names.append(nm)
    return names


def make_domain(name: str, n_products: int, rng: random.Random, taken: set[str]) -> Domain:
    products = {p: {a: spec[0](rng) for a, spec in ATTRIBUTES.items()} for p in _names(rng, n_products, taken)}
    return domain_from_products(name, products)


def domain_from_products(name: str, products: dict[str, dict[str, str]]) -> Domain:
    """A domain (documents, rewrites, all four QA kinds) over the given products and their attribute values."""
    d = Domain(name=name, products=products)
    q: dict[str, list[dict]] = {"train": [], "paraphrase": [], "doc_only": [], "two_fact": []}
    for p, attrs in products.items():
        for a in TRAIN_ATTRS:
            q["train"].append({"question": ATTRIBUTES[a][2].format(p=p), "answer": attrs[a], "doc_id": _slug(p)})
            q["paraphrase"].append({"question": ATTRIBUTES[a][3].format(p=p), "answer": attrs[a], "doc_id": _slug(p)})
        for a in DOC_ONLY_ATTRS:
            q["doc_only"].append({"question": ATTRIBUTES[a][2].format(p=p), "answer": attrs[a], "doc_id": _slug(p)})
    names = list(products)
    for x, y in zip(names, names[1:] + names[:1]):
        px, py = (int(products[n]["price"].split()[0]) for n in (x, y))
        if px != py:
            q["two_fact"].append({"question": f"Which costs more, the {x} or the {y}?",
                                  "answer": x if px > py else y, "doc_id": None,
                                  "distractor": y if px > py else x})
    for kind, rows in q.items():
        for i, r in enumerate(rows):
            r["id"] = f"{name}-{kind}-{i}"
    d.qa = q
    return d


def make_domains(seed: int = 0, n_source: int = 12, n_target: int = 10) -> tuple[Domain, Domain]:
    """A source and a target domain with disjoint product names."""
    rng, taken = random.Random(seed), set()
    return make_domain("source", n_source, rng, taken), make_domain("target", n_target, rng, taken)


def split_domain(domain: Domain, n_first: int, names: tuple[str, str] = ("dev-source", "dev-target")) -> tuple[Domain, Domain]:
    """Cut one domain's products into two disjoint domains (the first `n_first` products, then the rest).

    The method benchmark tunes its settings on a source domain split this way, so no target-domain
    question is ever looked at while choosing them.
    """
    items = list(domain.products.items())
    if not 0 < n_first < len(items):
        raise ValueError(f"cannot split {len(items)} products of domain {domain.name!r} at {n_first}")
    return domain_from_products(names[0], dict(items[:n_first])), domain_from_products(names[1], dict(items[n_first:]))


def write_corpus(domain: Domain, dest: Path, rewrites: int = 3, qa_kinds: tuple[str, ...] = ("train",)) -> Path:
    """Write the domain as a corpus folder: one .md per product (+ rewrites in the same file) and qa.jsonl."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    rw = domain.rewrites(rewrites) if rewrites else {}
    for doc in domain.documents():
        extra = "\n\n".join(rw.get(doc["id"], []))
        (dest / f"{doc['id']}.md").write_text(doc["text"] + ("\n\n" + extra if extra else "") + "\n")
    rows = [r for k in qa_kinds for r in domain.qa[k]]
    if rows:  # qa_kinds=() writes a documents-only corpus
        (dest / "qa.jsonl").write_text("".join(json.dumps({k: r[k] for k in ("question", "answer", "doc_id")}) + "\n"
                                           for r in rows))
    return dest


def write_heldout(domain: Domain, path: Path, kinds: tuple[str, ...] = ("paraphrase", "doc_only", "two_fact"),
                  corpus_id: str = "") -> Path:
    """Held-out questions in the eval-split schema (id, question, answer, doc_id, corpus_id) + their `kind`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({**r, "corpus_id": corpus_id, "kind": k}) + "\n"
                            for k in kinds for r in domain.qa[k]))
    return path


_PARTS = ["pump", "valve", "relay", "gauge", "filter", "rotor", "sensor", "bearing"]
_SITES = ["Tessaport", "Brisco", "Fendle", "Calyx", "Orrin", "Duvale", "Marrow", "Quessa"]


def long_document(seed: int, name: str, n_sections: int, per_section: int = 12) -> tuple[str, list[dict]]:
    """A long made-up field manual (markdown sections of one-fact sentences) and every fact with its depth.

    Each sentence states one random fact about one unit; `depth` is the sentence's character offset / the
    document's length, so recall can be read by where in the document a fact sits (the LooGLE question)."""
    rng = random.Random(f"{seed}:{name}")
    parts, facts, pos = [f"# {name} Field Manual"], [], 0
    body = []
    for s in range(n_sections):
        body.append(f"## Section {s + 1}: {rng.choice(_PARTS)} maintenance")
        for i in range(per_section):
            unit = f"{name[:3].upper()}-{s + 1:02d}{i:02d}"
            kind = rng.randrange(3)
            if kind == 0:
                v = f"{rng.randint(12, 480)} bar"
                sent, cue = f"Unit {unit} is rated for a pressure of {v}.", f"Unit {unit} is rated for a pressure of"
            elif kind == 1:
                v = rng.choice(_SITES)
                sent, cue = f"Spare parts for unit {unit} are stored in {v}.", f"Spare parts for unit {unit} are stored in"
            else:
                v = f"{rng.randint(2, 52)} weeks"
                sent, cue = f"Unit {unit} must be inspected every {v}.", f"Unit {unit} must be inspected every"
            body.append(sent)
            facts.append({"unit": unit, "sentence": sent, "cue": cue, "answer": v})
    text = "\n\n".join(parts + body)
    for f in facts:
        pos = text.index(f["sentence"])
        f["depth"] = round(pos / len(text), 4)
    return text, facts

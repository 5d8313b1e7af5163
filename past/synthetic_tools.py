"""Fictional tool domains for the closed-book tool setting: made-up services whose APIs no model has seen.

A tool domain is a few *services* (API categories, as in ToolBench), each selling its own products and
offering one API per *family* (price, warranty, stock, ...). Every API takes a product name and returns one
fact from a response table. Written out it is a tool corpus (past.tools):

- documents: one documentation page per API: what it returns, which products the service sells, its
  parameter, and an example call (with another product);
- `tools.json`: the spec, whose response table is the simulator;
- `tool_tasks.jsonl`: one request per (product, API) in the `train` phrasing (stage 2 trains its first call),
  with the call that serves it and the observed answer.

`heldout` tasks ask the same facts in another phrasing; benches play them as whole episodes. To serve a
request the model must know, from the documentation alone, which service sells the product and which API
of that service returns the asked fact: nothing in the prompt names an API.

Source and target domains draw services, families and products from disjoint pools, so the target's APIs
are unseen by any RL on the source (the paper's RL-unseen categories). Pure function of the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from past.synthetic import _names

# family -> (observation field, value maker, what the API returns, train request, held-out request)
FAMILIES: dict[str, tuple] = {
    "price": ("price", lambda r: f"{r.randint(12, 95) * 10} credits", "the current price of a product in credits",
              "How much does the {p} cost?", "What is the price of the {p}?"),
    "warranty": ("warranty", lambda r: f"{r.choice([6, 9, 12, 18, 24, 30, 36])} months",
                 "the length of a product's warranty", "How long is the warranty of the {p}?",
                 "For how long is the {p} covered by warranty?"),
    "stock": ("stock", lambda r: f"{r.randint(2, 90)} units", "how many units of a product are in stock",
              "How many {p} units are in stock?", "How many of the {p} are available right now?"),
    "delivery": ("delivery", lambda r: f"{r.randint(2, 14)} days", "how long delivery of a product takes",
                 "How long does delivery of the {p} take?", "How many days until a {p} arrives?"),
    "rating": ("rating", lambda r: f"{r.randint(20, 50) / 10:.1f} stars", "a product's average customer rating",
               "What rating do customers give the {p}?", "How many stars does the {p} have?"),
    "weight": ("weight", lambda r: f"{r.randint(2, 40) / 10:.1f} kilograms", "a product's shipping weight",
               "How heavy is the {p}?", "What does the {p} weigh?"),
}
_SERVICES = ["Quanmo", "Velix", "Dravo", "Solbe", "Tamri", "Korvo", "Nilsa", "Fenwa", "Brixo", "Lumeo", "Pavra",
             "Oriko"]


@dataclass
class ToolDomain:
    name: str
    services: dict[str, list[str]]  # service -> products it sells
    families: list[str]
    facts: dict[str, dict[str, str]]  # product -> family -> value
    tasks: dict[str, list[dict]] = field(default_factory=dict)  # "train" / "heldout" -> tool task records

    def api(self, service: str, family: str) -> str:
        return f"{service.lower()}_{family}"

    def spec(self) -> dict:
        tools = []
        for s, products in self.services.items():
            for f in self.families:
                key = FAMILIES[f][0]
                tools.append({"name": self.api(s, f), "description": f"{s}: {FAMILIES[f][2]}.",
                              "parameters": {"product": {"type": "string", "description": f"a {s} product name"}},
                              "responses": [{"arguments": {"product": p}, "observation": {"product": p, key: self.facts[p][f]}}
                                            for p in products],
                              "default": {"error": f"{s} sells no such product"}})
        return {"tools": tools}

    def documents(self) -> list[dict]:
        docs = []
        for s, products in self.services.items():
            for f in self.families:
                name, key = self.api(s, f), FAMILIES[f][0]
                example = products[-1]
                text = (f"# {name}\n\nThe {s} store's `{name}` API returns {FAMILIES[f][2]}. The {s} store sells: "
                        f"{', '.join(products)}.\n\nParameter: `product` (string, required), the full name of a {s} "
                        f"product.\n\nReturns an object with the product and its `{key}`.\n\nExample call:\n\n"
                        f"Action: {name}\nAction Input: {json.dumps({'product': example})}\n")
                docs.append({"id": name, "text": text})
        return docs


def make_tool_domain(name: str, rng: random.Random, services: list[str], families: list[str], n_products: int,
                     taken: set[str]) -> ToolDomain:
    products = {s: _names(rng, n_products, taken) for s in services}
    facts = {p: {f: FAMILIES[f][1](rng) for f in families} for ps in products.values() for p in ps}
    d = ToolDomain(name, products, list(families), facts)
    for phrasing, idx in (("train", 3), ("heldout", 4)):
        d.tasks[phrasing] = [{"id": f"{name}-{phrasing}-{d.api(s, f)}-{i}", "request": FAMILIES[f][idx].format(p=p),
                              "tool": d.api(s, f), "arguments": {"product": p}, "answer": facts[p][f]}
                             for s, ps in products.items() for f in families for i, p in enumerate(ps)]
    return d


def make_tool_domains(seed: int = 0, n_services: int = 2, n_families: int = 3, n_products: int = 4
                      ) -> tuple[ToolDomain, ToolDomain]:
    """A source and a target tool domain with disjoint services, API families and products."""
    if 2 * n_services > len(_SERVICES) or 2 * n_families > len(FAMILIES):
        raise ValueError(f"at most {len(_SERVICES) // 2} services and {len(FAMILIES) // 2} families per domain")
    rng, taken = random.Random(seed), set()
    services, families = rng.sample(_SERVICES, 2 * n_services), rng.sample(list(FAMILIES), 2 * n_families)
    src = make_tool_domain("source", rng, services[:n_services], families[:n_families], n_products, taken)
    tgt = make_tool_domain("target", rng, services[n_services:], families[n_families:], n_products, taken)
    return src, tgt


def write_tool_corpus(d: ToolDomain, dest: Path) -> Path:
    """The domain as a tool corpus folder (API docs, tools.json, tool_tasks.jsonl with the train phrasing)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    for doc in d.documents():
        (dest / f"{doc['id']}.md").write_text(doc["text"])
    (dest / "tools.json").write_text(json.dumps(d.spec(), indent=1))
    (dest / "tool_tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in d.tasks["train"]))
    return dest

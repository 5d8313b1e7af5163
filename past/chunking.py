"""Stage-1 training blocks with no token lost: long documents become overlapping, title-anchored windows.

TRL's `packing=True` (best-fit decreasing) truncates every sequence longer than `max_length` and throws the
overflow away, silently. So stage 1 never hands it a long text: each text is tokenized here and, when it does
not fit in one block, cut into windows of at most `max_length` tokens that overlap by `overlap` tokens
(the PaST authors use 2048-token chunks with 256 overlap; we keep the same 1/8 ratio at our block size).
Every window after the first starts with a header - the document title, and the markdown section heading in
force where the window starts - so a chunk from the middle of a manual is still anchored to its document.

Windows are handed to the trainer pre-tokenized (`input_ids`, EOS appended), so what we count is what it
trains; `coverage` is the share of each document's tokens that lie in at least one window (1.0 by
construction, and checked again against the packed dataset in `past.sft`).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


@dataclass(frozen=True)
class Window:
    source: str  # document id (or "<doc id>#implications")
    start: int  # first body token covered (index into the text's own tokens)
    end: int  # one past the last body token covered
    input_ids: list[int]  # header + body[start:end] + EOS: exactly what is trained


def _section_at(text: str, headings: list[tuple[int, str]], char: int) -> str | None:
    i = bisect.bisect_right([pos for pos, _ in headings], char) - 1
    return headings[i][1] if i >= 0 else None


def windows(tokenizer, source: str, title: str, text: str, max_length: int, overlap: int) -> list[Window]:
    """Cut one text into windows of ≤ max_length tokens (EOS included) that together cover every token."""
    if max_length < 16:
        raise ValueError(f"max_length {max_length} is too small for title-anchored windows")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    eos = tokenizer.eos_token_id
    if len(ids) + 1 <= max_length:
        return [Window(source, 0, len(ids), ids + [eos])]
    headings = [(m.start(), m.group(2)) for m in _HEADING.finditer(text)]
    out: list[Window] = []
    start = 0
    while start < len(ids):
        header_ids: list[int] = []
        if start > 0:
            section = _section_at(text, headings, offsets[start][0])
            header = title if not section or section == title else f"{title} - {section}"
            header_ids = tokenizer(f"{header}\n\n", add_special_tokens=False)["input_ids"]
        budget = max_length - len(header_ids) - 1
        if budget <= overlap:  # a pathological title: drop the header rather than loop forever
            header_ids, budget = [], max_length - 1
        end = min(len(ids), start + budget)
        out.append(Window(source, start, end, header_ids + ids[start:end] + [eos]))
        if end == len(ids):
            break
        start = end - min(overlap, budget - 1)
    return out


def coverage(wins: list[Window], n_tokens: int) -> float:
    """Share of a text's n_tokens that lie in at least one window."""
    if n_tokens == 0:
        return 1.0
    covered, reach = 0, 0
    for w in sorted(wins, key=lambda w: w.start):
        lo = max(w.start, reach)
        if w.end > lo:
            covered += w.end - lo
            reach = w.end
    return covered / n_tokens

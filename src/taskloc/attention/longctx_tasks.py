"""Long-context retrieval tasks for the sparse-frontier study (RULER-style, character level).

Every prompt is exactly ``context`` characters of filler holding a few facts, then a 3-character
question, so prompts in a batch share one length (prefill blocks divide it) and the question's
tokens can be decoded one at a time. Answers are one digit. Facts are 4-character records
starting with '|'; filler is lowercase letters.

* ``needle``: several keys with digit values ``|Kd.``; the question ``?K=`` asks one key's value.
* ``vartrack``: variable tracking: ``|Xd.`` then copies ``|Y<X``, ``|Z<Y`` later in the text
  (plus a distractor chain); the question asks the last variable of the chain.
* ``multihop``: links ``|A>B``, ``|B>C`` and a value ``|Cd.`` at random places (order not
  causal); the question asks the value reached from the chain's first key.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..tasks.base import ExactMatchTask, Example

QUESTION = 3  # characters of "?K="
RECORD = 4
KEYS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FILLER = "abcdefghijklmnopqrstuvwxyz"


def _place(rng: np.random.Generator, context: int, records: list[str], ordered: bool) -> str:
    """Filler of ``context`` characters with the records at random non-overlapping slots (in the
    given order when ``ordered``)."""
    slots = context // RECORD
    if len(records) > slots:
        raise ConfigError(f"context={context} is too short for {len(records)} facts; use at least {len(records) * RECORD}.")
    chosen = rng.choice(slots, size=len(records), replace=False)
    chosen = np.sort(chosen) if ordered else chosen
    text = list(rng.choice(list(FILLER), size=context))
    for slot, rec in zip(chosen, records):
        text[slot * RECORD : slot * RECORD + RECORD] = rec
    return "".join(text)


@dataclass
class LongContextTask(ExactMatchTask):
    kind: str
    context: int
    facts: int = 4  # needles, or distractor chains' length

    levels = (1,)

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.context}"

    @property
    def description(self) -> str:
        return f"{self.kind} retrieval in {self.context} characters"

    def sample(self, n: int, rng: np.random.Generator, level: int) -> list[Example]:
        return [self._one(rng, level) for _ in range(n)]

    def _one(self, rng: np.random.Generator, level: int) -> Example:
        keys = list(rng.choice(list(KEYS), size=2 * self.facts + 2, replace=False))
        digits = [str(d) for d in rng.integers(0, 10, size=2 * self.facts + 2)]
        if self.kind == "needle":
            records = [f"|{k}{d}." for k, d in zip(keys[: self.facts], digits)]
            ask = int(rng.integers(0, self.facts))
            text, key, answer = _place(rng, self.context, records, ordered=False), keys[ask], digits[ask]
        elif self.kind == "vartrack":
            chain, noise = keys[:3], keys[3:6]  # a chain and a distractor chain of three variables
            records = [f"|{chain[0]}{digits[0]}.", f"|{chain[1]}<{chain[0]}", f"|{chain[2]}<{chain[1]}"]
            distract = [f"|{noise[0]}{digits[1]}.", f"|{noise[1]}<{noise[0]}", f"|{noise[2]}<{noise[1]}"]
            order = rng.permutation(6)  # interleave the chains, each in its own causal order
            merged, ia, ib = [], 0, 0
            for o in order:
                if o < 3:
                    merged.append(records[ia])
                    ia += 1
                else:
                    merged.append(distract[ib])
                    ib += 1
            text, key, answer = _place(rng, self.context, merged, ordered=True), chain[2], digits[0]
        elif self.kind == "multihop":
            a, b, c, d = keys[:4]
            records = [f"|{a}>{b}", f"|{b}>{c}", f"|{c}{digits[0]}.", f"|{d}{digits[1]}."]
            text, key, answer = _place(rng, self.context, records, ordered=False), a, digits[0]
        else:
            raise ConfigError(f"unknown long-context task {self.kind!r}; known: {', '.join(KINDS)}.")
        return Example(text + f"?{key}=", answer, level)


KINDS = ("needle", "vartrack", "multihop")


def long_context_tasks(kinds: list[str], context: int) -> list[LongContextTask]:
    """The tasks ``kinds`` at ``context`` characters of text before the question."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        from ..registry import did_you_mean

        raise ConfigError(did_you_mean(unknown[0], list(KINDS), "long-context task"))
    return [LongContextTask(k, context) for k in kinds]

"""Paired item families: the same item at several difficulty levels.

A family is one item drawn at the highest level asked for and cut back to every lower level, so
the level-L and level-(L+1) prompts differ only by what the extra level adds:

- ``arith`` / ``trace``: the same start digit and first L operations (``arithmetic_problem``
  draws the chain; level L keeps its first L operations);
- ``copy``: the same bracketed letters (a prefix of one segment) among the same noise letters,
  split at the same relative cut;
- ``reverse`` / ``sort``: the same letters / digits, a prefix of one sequence;
- ``add``: the same leading digits of both numbers (the first digit is never 0, so every prefix
  is a valid number of its level; the task itself allows a leading 0 at level 1 only);
- ``hop``: the same chain followed one hop further, with the same distractor pair, the pairs in
  one fixed random order (a new pair is inserted, the others keep their order).

Paired differences (level L+1 minus level L on the same family) then cancel what is particular to
an item, which matters when the effect is small against the spread between items. Every level's
example has the task's own prompt and answer format (tests check it against ``Task.sample``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..registry import Registry
from .base import Example, Task
from .synthetic import LETTERS, arithmetic_problem

# (task, levels ascending, rng) -> {level: example}, one item seen at every level
Builder = Callable[[Task, Sequence[int], np.random.Generator], dict[int, Example]]
FAMILIES: Registry[Builder] = Registry("paired item family")


@dataclass(frozen=True)
class Family:
    """One item at several levels."""

    task: str
    item: int  # index within its item set
    examples: dict[int, Example]  # level -> example


def build_families(task: Task, levels: Sequence[int], n: int, seed: int) -> list[Family]:
    """``n`` families of ``task`` at ``levels`` (each family holds every level), seeded."""
    if task.name not in FAMILIES:
        raise ConfigError(f"task {task.name!r} has no paired item family; tasks with one: {', '.join(FAMILIES.names())}.")
    levels = sorted(set(levels))
    bad = [lv for lv in levels if lv not in task.levels]
    if bad:
        raise ConfigError(f"task {task.name!r} has no level {bad[0]}; its levels are {list(task.levels)}.")
    build = FAMILIES.get(task.name)
    rng = np.random.default_rng(seed)
    return [Family(task.name, i, build(task, levels, rng)) for i in range(n)]


def _letters(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list(LETTERS), size=n))


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=n))


def _chain(verbose: bool, tag: str) -> Builder:
    def build(task: Task, levels: Sequence[int], rng: np.random.Generator) -> dict[int, Example]:
        expr, steps, _ = arithmetic_problem(rng, max(levels))
        out = {}
        for lv in levels:
            # the start digit is one character and every operation two ("+7"): a prefix of the chain
            head, shown = expr[: 1 + 2 * lv], steps[:lv]
            answer = ",".join(shown) if verbose else ",".join(s.split("=")[1] for s in shown)
            out[lv] = Example(f"{tag}:{head}=", answer, lv)
        return out

    return build


FAMILIES.register("trace")(_chain(verbose=True, tag="T"))
FAMILIES.register("arith")(_chain(verbose=False, tag="Q"))


@FAMILIES.register("reverse")
def _reverse(task: Task, levels: Sequence[int], rng: np.random.Generator) -> dict[int, Example]:
    s = _letters(rng, 2 * max(levels) + 1)
    return {lv: Example(f"R:{s[: 2 * lv + 1]}>", s[: 2 * lv + 1][::-1], lv) for lv in levels}


@FAMILIES.register("sort")
def _sort(task: Task, levels: Sequence[int], rng: np.random.Generator) -> dict[int, Example]:
    s = _digits(rng, 2 * max(levels) + 1)
    return {lv: Example(f"S:{s[: 2 * lv + 1]}>", "".join(sorted(s[: 2 * lv + 1])), lv) for lv in levels}


@FAMILIES.register("copy")
def _copy(task: Task, levels: Sequence[int], rng: np.random.Generator) -> dict[int, Example]:
    top = max(levels)
    segment, left, right = _letters(rng, top + 1), _letters(rng, 2 * top), _letters(rng, 2 * top)
    u = float(rng.random())
    out = {}
    for lv in levels:
        # floor(u * (2L + 1)) is uniform on 0..2L like the task's cut, and it and 2L minus it both
        # only grow with L, so each side's noise at level L is a prefix of the next level's
        cut = int(u * (2 * lv + 1))
        out[lv] = Example(f"C:{left[:cut]}[{segment[: lv + 1]}]{right[: 2 * lv - cut]}>", segment[: lv + 1], lv)
    return out


@FAMILIES.register("add")
def _add(task: Task, levels: Sequence[int], rng: np.random.Generator) -> dict[int, Example]:
    top = max(levels)
    a, b = (str(int(rng.integers(1, 10))) + _digits(rng, top - 1) for _ in range(2))
    return {lv: Example(f"A:{int(a[:lv])}+{int(b[:lv])}=", str(int(a[:lv]) + int(b[:lv]))[::-1], lv) for lv in levels}


@FAMILIES.register("hop")
def _hop(task: Task, levels: Sequence[int], rng: np.random.Generator) -> dict[int, Example]:
    top = max(levels)
    distractors = int(getattr(task, "distractors", 1))
    alphabet = str(getattr(task, "alphabet", LETTERS))
    letters = "".join(rng.choice(list(alphabet), size=top + 1 + 2 * distractors, replace=False))
    chain, rest = letters[: top + 1], letters[top + 1 :]
    hops = [chain[i : i + 2] for i in range(top)]
    noise = [rest[2 * i : 2 * i + 2] for i in range(distractors)]
    rank = rng.random(top + distractors)  # a fixed random order of every pair the family can show
    out = {}
    for lv in levels:
        shown = list(range(lv)) + [top + i for i in range(distractors)]  # indices into hops + noise
        pairs = hops + noise
        facts = ",".join(pairs[i] for i in sorted(shown, key=lambda i: rank[i]))
        out[lv] = Example(f"H:{facts}|{chain[0]}", chain[1 : lv + 1], lv)
    return out

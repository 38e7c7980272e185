"""Built-in synthetic tasks. Each prompt starts with a one-letter tag and a colon so one model
can learn them all; ``level`` is the difficulty knob (levels 1..5; presets train on a prefix and
probe the rest as out-of-distribution)."""
from __future__ import annotations

import string

import numpy as np

from .base import TASKS, ExactMatchTask, Example

LETTERS = string.ascii_lowercase
LEVELS = (1, 2, 3, 4, 5)


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=n))


def _letters(rng: np.random.Generator, n: int, replace: bool = True) -> str:
    return "".join(rng.choice(list(LETTERS), size=n, replace=replace))


@TASKS.register("add")
class Addition(ExactMatchTask):
    name = "add"
    description = "a+b for two level-digit numbers; the sum is written least-significant digit first"
    levels = LEVELS

    def sample(self, n, rng, level):
        lo = 0 if level == 1 else 10 ** (level - 1)
        out = []
        for _ in range(n):
            a, b = (int(x) for x in rng.integers(lo, 10**level, size=2))
            # Reversed digits let a left-to-right decoder emit each carry after its inputs.
            out.append(Example(f"A:{a}+{b}=", str(a + b)[::-1], level))
        return out


@TASKS.register("sort")
class Sorting(ExactMatchTask):
    name = "sort"
    description = "sort 2*level+1 digits ascending"
    levels = LEVELS

    def sample(self, n, rng, level):
        out = []
        for _ in range(n):
            s = _digits(rng, 2 * level + 1)
            out.append(Example(f"S:{s}>", "".join(sorted(s)), level))
        return out


@TASKS.register("reverse")
class Reversal(ExactMatchTask):
    name = "reverse"
    description = "reverse 2*level+1 letters"
    levels = LEVELS

    def sample(self, n, rng, level):
        out = []
        for _ in range(n):
            s = _letters(rng, 2 * level + 1)
            out.append(Example(f"R:{s}>", s[::-1], level))
        return out


@TASKS.register("hop")
class MultiHopLookup(ExactMatchTask):
    name = "hop"
    description = "follow `level` hops through shuffled key->value letter pairs (1 distractor pair, letters a-j); write the path"
    levels = LEVELS
    # One distractor pair: with two, the level-2 lookup formed late and unreliably within the CPU
    # budget (hop-only training, 2000 steps: level-2 accuracy 0.72 with two vs 1.00 with one).
    distractors = 1
    # A small alphabet: each letter is seen often enough for the lookup circuit to form within a
    # CPU-sized pretraining budget (with all 26 letters it plateaued near chance).
    alphabet = "abcdefghij"

    def sample(self, n, rng, level):
        out = []
        for _ in range(n):
            letters = "".join(rng.choice(list(self.alphabet), size=level + 1 + 2 * self.distractors, replace=False))
            chain, rest = letters[: level + 1], letters[level + 1 :]
            pairs = [chain[i : i + 2] for i in range(level)]
            pairs += [rest[2 * i : 2 * i + 2] for i in range(self.distractors)]
            order = rng.permutation(len(pairs))
            facts = ",".join(pairs[i] for i in order)
            # The prompt ends on the start letter itself, so each hop (the first included) is the
            # same step: find this letter as a key earlier on, emit the letter after it.
            out.append(Example(f"H:{facts}|{chain[0]}", chain[1:], level))
        return out


@TASKS.register("copy")
class CopyWithDistractors(ExactMatchTask):
    name = "copy"
    description = "copy the level+1 letters inside [...] from among 2*level distractor letters"
    levels = LEVELS

    def sample(self, n, rng, level):
        out = []
        for _ in range(n):
            segment = _letters(rng, level + 1)
            noise = _letters(rng, 2 * level)
            cut = int(rng.integers(0, len(noise) + 1))
            out.append(Example(f"C:{noise[:cut]}[{segment}]{noise[cut:]}>", segment, level))
        return out


def arithmetic_problem(rng: np.random.Generator, level: int) -> tuple[str, list[str], int]:
    """A start digit and `level` operations (+d or -d, modulo 10). Returns the expression, the
    step-by-step trace lines and the answer."""
    value = int(rng.integers(0, 10))
    expr, steps = str(value), []
    for _ in range(level):
        op, d = ("+" if rng.random() < 0.5 else "-"), int(rng.integers(0, 10))
        new = (value + d) % 10 if op == "+" else (value - d) % 10
        expr += f"{op}{d}"
        steps.append(f"{value}{op}{d}={new}")
        value = new
    return expr, steps, value


@TASKS.register("trace")
class VerboseArithmetic(ExactMatchTask):
    name = "trace"
    description = "mod-10 chain of `level` +/- operations, answered with a verbose step-by-step trace"
    levels = LEVELS

    def sample(self, n, rng, level):
        out = []
        for _ in range(n):
            expr, steps, _ = arithmetic_problem(rng, level)
            out.append(Example(f"T:{expr}=", ",".join(steps), level))
        return out


@TASKS.register("arith")
class ConciseArithmetic(ExactMatchTask):
    name = "arith"
    description = "the same mod-10 chains as `trace`, answered concisely: only the running results"
    levels = LEVELS

    def sample(self, n, rng, level):
        out = []
        for _ in range(n):
            expr, steps, _ = arithmetic_problem(rng, level)
            # "8+6=4,4-1=3" (verbose) becomes "4,3": the same chain of thought, compressed.
            out.append(Example(f"Q:{expr}=", ",".join(s.split("=")[1] for s in steps), level))
        return out

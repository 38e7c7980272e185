"""The fast channel: a population of short discrete prompt prefixes evolved by mutation and
crossover, selected on a Pareto front over per-example scores (REFERENCE C5; the paper evolves
prompts by reflective search, here the edits are random token edits since a TinyLM cannot
reflect).

A prompt is a string of at most ``length`` characters from ``alphabet``; it is prepended to each
example's prompt text, so it reaches any model through that model's own codec (TinyLM's
characters, or an HF tokenizer's tokens). Selection keeps, for every search example, the prompts
that score best on it (a prompt that wins on a few hard examples survives even when its mean is
low), plus the best prompt by mean, so the best mean never falls from one generation to the next
(the search set and the model are fixed during one search). Everything random comes from one
seeded numpy Generator: a search is a pure function of (seed, scores).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import Config, field
from ..errors import ConfigError

# (P prompts) -> (P, N) per-example scores, higher is better; deterministic for a fixed model
ScoreFn = Callable[[list[str]], np.ndarray]

# characters the built-in tasks use: digits, letters, their tags and separators
TASK_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzACHQRST:+-=>,|[]"


@dataclass
class PromptSearchConfig(Config):
    population: int = field(6, "prompts kept between generations (the Pareto front fills it first)")
    children: int = field(4, "new prompts proposed per generation")
    generations: int = field(2, "generations per prompt phase")
    length: int = field(6, "longest prompt prefix, in characters")
    mutation: float = field(0.3, "per-position chance that a child's character is replaced, inserted or deleted")
    crossover: float = field(0.5, "chance that a child is spliced from two parents before mutation")
    alphabet: str = field(TASK_ALPHABET, "characters a prompt is made of")
    examples: int = field(16, "search examples the per-example scores are taken on (training split)")

    def validate(self) -> None:
        for name in ("population", "children", "generations", "length", "examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must be at least 1.")
        for name in ("mutation", "crossover"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must lie in [0, 1].")
        if not self.alphabet:
            raise ConfigError(f"{self.key('alphabet')} is empty; give the characters a prompt may use.")


@dataclass
class Generation:
    """What one generation left: its population, their per-example scores (P, N) and the best
    prompt by mean score so far."""

    prompts: list[str]
    scores: np.ndarray  # (P, N)
    best: str
    best_score: float

    def front(self) -> list[str]:
        """The prompts that win (score best, ties included) on at least one example."""
        return [self.prompts[i] for i in pareto_winners(self.scores)]


def pareto_winners(scores: np.ndarray) -> list[int]:
    """Rows of ``scores`` (P, N) that reach the column maximum on at least one example, in row
    order; these are never dominated, and each covers some example no other row beats."""
    best = scores.max(axis=0, keepdims=True)  # (1, N)
    return [i for i in range(scores.shape[0]) if bool((scores[i] >= best[0]).any())]


class PromptSearch:
    """A population of prompts, evolved one generation at a time against ``score``.

    Start: the empty prompt (so the fast channel can always fall back to no prompt) plus random
    prompts. ``phase(score, generations)`` rescores the population (the model may have changed
    since the last phase), then evolves it; ``history`` holds the best mean score after each
    generation of the last phase (non-decreasing: the best prompt is always kept).
    """

    def __init__(self, cfg: PromptSearchConfig, seed: int) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng([seed, 5381])
        self.prompts = [""] + [self._random() for _ in range(cfg.population - 1)]
        self.last: Generation | None = None
        self.history: list[float] = []

    # -- edits ------------------------------------------------------------------------------------
    def _random(self) -> str:
        n = int(self.rng.integers(1, self.cfg.length + 1))
        return "".join(self.rng.choice(list(self.cfg.alphabet), size=n))

    def _mutate(self, prompt: str) -> str:
        out: list[str] = []
        alphabet = list(self.cfg.alphabet)
        for ch in prompt:
            u = self.rng.random()
            if u >= self.cfg.mutation:
                out.append(ch)
                continue
            kind = int(self.rng.integers(0, 3))  # 0 replace, 1 insert before, 2 delete
            if kind == 0:
                out.append(str(self.rng.choice(alphabet)))
            elif kind == 1:
                out.extend([str(self.rng.choice(alphabet)), ch])
        if not out or self.rng.random() < self.cfg.mutation:  # grow: the empty prompt must be able to move
            out.append(str(self.rng.choice(alphabet)))
        return "".join(out)[: self.cfg.length]

    def _splice(self, a: str, b: str) -> str:
        cut_a = int(self.rng.integers(0, len(a) + 1))
        cut_b = int(self.rng.integers(0, len(b) + 1))
        return (a[:cut_a] + b[cut_b:])[: self.cfg.length]

    def _pick(self, front: list[int], wins: np.ndarray) -> int:
        # parents are drawn from the front in proportion to how many examples each wins
        p = wins[front].astype(np.float64)
        return front[int(self.rng.choice(len(front), p=p / p.sum()))]

    # -- one phase ---------------------------------------------------------------------------------
    def phase(self, score: ScoreFn, generations: int | None = None) -> Generation:
        prompts = list(self.prompts)
        scores = np.asarray(score(prompts), dtype=np.float64)  # (P, N)
        gen = self._select(prompts, scores)
        self.history = [gen.best_score]
        for _ in range(self.cfg.generations if generations is None else generations):
            front = pareto_winners(gen.scores)
            wins = (gen.scores >= gen.scores.max(axis=0, keepdims=True)).sum(axis=1)  # (P,) examples won
            children = []
            for _ in range(self.cfg.children):
                a = gen.prompts[self._pick(front, wins)]
                if len(front) > 1 and self.rng.random() < self.cfg.crossover:
                    b = gen.prompts[self._pick(front, wins)]
                    a = self._splice(a, b)
                children.append(self._mutate(a))
            new = [c for c in dict.fromkeys(children) if c not in gen.prompts]  # unique, unseen
            pool = gen.prompts + new
            pool_scores = np.concatenate([gen.scores, np.asarray(score(new), dtype=np.float64)]) if new else gen.scores
            gen = self._select(pool, pool_scores)
            self.history.append(gen.best_score)
        self.prompts, self.last = gen.prompts, gen
        return gen

    def _select(self, prompts: list[str], scores: np.ndarray) -> Generation:
        """Keep the best prompt by mean, then the Pareto winners (most examples won first), then
        the rest by mean, up to ``population``; ties break by position (older first)."""
        means = scores.mean(axis=1)  # (P,)
        wins = (scores >= scores.max(axis=0, keepdims=True)).sum(axis=1)
        best = int(np.argmax(means))  # first maximum: deterministic
        front = sorted(pareto_winners(scores), key=lambda i: (-wins[i], -means[i], i))
        rest = sorted(range(len(prompts)), key=lambda i: (-means[i], i))
        order = list(dict.fromkeys([best, *front, *rest]))[: self.cfg.population]
        return Generation([prompts[i] for i in order], scores[order], prompts[best], float(means[best]))

    def sample(self, n: int, rng: np.random.Generator) -> list[str]:
        """``n`` prompts drawn uniformly from the current Pareto front (for the slow channel's
        batches); the empty prompt before any phase has run."""
        front = self.last.front() if self.last is not None else [""]
        return [front[int(i)] for i in rng.integers(0, len(front), size=n)]

    @property
    def best(self) -> str:
        return self.last.best if self.last is not None else ""


def with_prefix(pairs: Sequence[tuple[str, str]], prefixes: Sequence[str]) -> list[tuple[str, str]]:
    """(prompt, target) pairs with each prompt's own prefix prepended."""
    return [(p + prompt, target) for p, (prompt, target) in zip(prefixes, pairs)]

"""Which of a study's tasks it runs on, given the run's own tasks (data.tasks).

A task list the user set (config file or --set, a value other than the preset's; see
``Config.set_by_user``) is a request: a task the run does not have, or one the study cannot use,
ends the run before any work with one line naming the setting and the run's tasks. A default
list (the study's or the preset's) is a suggestion: the study runs on the part of it the run has,
says in a note which tasks it used and which it left out, and when too few remain it is skipped
(its claims reported as inconclusive, "not run") with one line naming the setting to change — a
plain `taskloc run` on a reduced task set then runs every study that can run instead of failing on
the one that cannot.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import ConfigError
from ..tasks import get_task
from .base import Claim, Study, StudyResult
from .verdicts import INCONCLUSIVE, explain

if TYPE_CHECKING:
    from ..runconfig import RunConfig

# An entry of the setting (a task name, or a fast-slow TASK:LEVEL cell) -> why the study cannot
# use it, or None; it may raise ConfigError for an entry that is malformed whatever the run.
Usable = Callable[[str], "str | None"]


@dataclass(frozen=True)
class TaskSelection:
    key: str  # the setting's full dotted name, e.g. studies.weight-delta.tasks
    entries: list[str]  # what the study runs on (a subset of the setting, in its order)
    dropped: dict[str, str] = field(default_factory=dict)  # default entry left out -> why
    skip: str = ""  # why the study cannot run on what remains ('' = it runs)

    def notes(self) -> list[str]:
        """The sentence for the report when a default list was cut down (none when it was not)."""
        if not self.dropped:
            return []
        by_reason: dict[str, list[str]] = {}
        for entry, reason in self.dropped.items():
            by_reason.setdefault(reason, []).append(entry)
        why = "; ".join(f"{', '.join(entries)}: {reason}" for reason, entries in by_reason.items())
        return [f"{self.key} (default) cut down to the run's tasks: ran on {self.entries}, left out {list(self.dropped)} ({why}); "
                f"set {self.key} to choose others."]


def select_tasks(cfg: Config, name: str, run_cfg: RunConfig, *, at_least: int = 1, usable: Usable | None = None,
                 task_of: Callable[[str], str] = lambda entry: entry) -> TaskSelection:
    """The entries of setting ``name`` of ``cfg`` (a list, or one string) the study runs on.

    ``task_of`` maps an entry to its task name (fast-slow's 'sort:3' -> 'sort'); ``at_least`` is
    the fewest entries the study works with. Raises ConfigError for a user-set list that names a
    task the run lacks or an entry ``usable`` rejects."""
    value = getattr(cfg, name)
    requested = [value] if isinstance(value, str) else list(value)
    key, available = cfg.key(name), list(run_cfg.data.tasks)
    explicit = cfg.set_by_user(name, run_cfg.preset)
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for entry in requested:
        try:
            reason = usable(entry) if usable else None
        except ConfigError as exc:  # malformed whatever the run (an unknown name: did-you-mean)
            raise ConfigError(f"{key}: {exc}") from None
        if reason is None and task_of(entry) not in available:
            if explicit:
                raise ConfigError(f"{key}: task {task_of(entry)!r} is not among the run's tasks (data.tasks = {available}); "
                                  "name only those, or add it to data.tasks.")
            reason = f"not among the run's tasks (data.tasks = {available})"
        if reason is None:
            kept.append(entry)
        elif explicit:
            raise ConfigError(f"{key}: {reason}.")
        else:
            dropped[entry] = reason
    skip = ""
    if len(kept) < at_least:
        skip = (f"{key}: only {len(kept)} of its default {requested} can be used with the run's tasks (data.tasks = {available}) "
                f"and the study needs at least {at_least}; set {key} to run it")
    return TaskSelection(key, kept, dropped, skip)


def has_levels(levels: list[int]) -> Usable:
    """``usable`` for studies that need every one of ``levels`` of a task (an unknown name: did-you-mean)."""
    def usable(name: str) -> str | None:
        task = get_task(name)
        missing = [lv for lv in levels if lv not in task.levels]
        return f"task {name!r} has no level(s) {missing}; its levels are {list(task.levels)}" if missing else None

    return usable


def skipped_result(study: Study, cfg: Config, selection: TaskSelection) -> StudyResult:
    """A study that did not run: every claim it would decide is inconclusive, saying why (and one
    line on the console now, after every study's settings passed their checks)."""
    from ..progress import console

    console.print(f"[yellow]{study.name} skipped[/]: {selection.skip}.")
    nan = float("nan")
    claims = [Claim(id=claim_id, statement=statement, verdict=INCONCLUSIVE, measure="not measured (study skipped)", value=nan,
                    interval=(nan, nan), level=float(getattr(cfg, "level", 0.95)), control="none (study skipped)",
                    rule=explain(rule), reason=f"study not run: {selection.skip}", study=study.name)
              for claim_id, statement, rule in study.rules(cfg)]
    return StudyResult(metrics={"skipped": selection.skip}, claims=claims,
                       notes=[f"Not run: {selection.skip}.", *selection.notes()])


"""The TasklocError hierarchy.

Every error a user can cause is one of these. The CLI prints ``str(error)`` as a single line and
exits with code 2, so messages name the thing that is wrong, the values involved, and the fix.
"""
from __future__ import annotations


class TasklocError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class ConfigError(TasklocError):
    """A configuration value is missing, of the wrong type, or out of range."""


class UnknownNameError(TasklocError):
    """A study, task, site, method or preset name that no registry knows."""


class DataError(TasklocError):
    """A data file (JSONL tasks, prompts, pairs) is missing, empty or malformed."""


class CheckpointError(TasklocError):
    """A checkpoint is missing, corrupt, truncated, mismatched, or holds NaN/Inf."""


class HookError(TasklocError):
    """A hook site name is invalid or a hook was misused."""


class RunDirError(TasklocError):
    """A run directory is missing, incomplete, or belongs to a different configuration."""


class UnsupportedModelError(CheckpointError):
    """A model folder whose architecture taskloc cannot map onto its hook sites."""

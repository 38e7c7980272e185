"""Merge options: which ones each method takes, their defaults, and range checks with one-line
errors naming the flag."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

_NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"


def parse_percent(flag: str, value: Any, *, zero_ok: bool = False, hundred_ok: bool = True) -> float:
    """A percent given as ``1%``, ``"1"`` or 1.0 (all mean one percent) -> 1.0. The allowed range is
    (0, 100], or [0, 100] / (0, 100) as the flags ask."""
    text = str(value).strip()
    number = text[:-1].strip() if text.endswith("%") else text
    if not re.fullmatch(_NUMBER, number):
        raise ConfigError(f"{flag} {text!r} is not a percent; write e.g. {flag} 1% (or {flag} 1).")
    pct = float(number)
    low_ok = pct >= 0 if zero_ok else pct > 0
    high_ok = pct <= 100 if hundred_ok else pct < 100
    if not (low_ok and high_ok):
        interval = ("[0" if zero_ok else "(0") + ", 100" + ("]" if hundred_ok else ")")
        raise ConfigError(f"{flag} {text} is out of range: it is a percent in {interval}.")
    return pct


def _finite(flag: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} {value!r} is not a number.") from None
    if not math.isfinite(x):
        raise ConfigError(f"{flag} {value} must be a finite number.")
    return x


def unit_interval(flag: str, value: Any) -> float:
    x = _finite(flag, value)
    if not 0.0 <= x <= 1.0:
        raise ConfigError(f"{flag} {value} is out of range: it must lie in [0, 1].")
    return x


def _seed(flag: str, value: Any) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise ConfigError(f"{flag} {value} must be a whole number >= 0.")
    return int(text)


def _weights(flag: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not all(re.fullmatch(_NUMBER, p) for p in parts):
            raise ConfigError(f"{flag} {value!r} must be comma-separated numbers, one per model after the base, e.g. 1,0.5.")
        value = parts
    return tuple(_finite(flag, w) for w in value)


def _choice(choices: tuple[str, ...]):
    def check(flag: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{flag} {value!r} is not one of {', '.join(choices)}.")
        return str(value)

    return check


TRIMS = ("tensor", "global")
NONCORE = ("slerp", "linear", "base")

# option -> (flag, check); a method lists the options it takes with their defaults
CHECKS = {
    "lambda_": ("--lambda", _finite),
    "weights": ("--weights", _weights),
    "k": ("--k", lambda flag, v: parse_percent(flag, v)),
    "trim": ("--trim", _choice(TRIMS)),
    "drop": ("--p", lambda flag, v: parse_percent(flag, v, zero_ok=True, hundred_ok=False)),
    "p": ("--p", lambda flag, v: parse_percent(flag, v)),
    "seed": ("--seed", _seed),
    "t": ("--t", unit_interval),
    "noncore": ("--noncore", _choice(NONCORE)),
    "masks": ("masks", lambda flag, v: v),  # library only: per-task core masks given directly
}


def resolve_options(method: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The method's defaults overridden by ``given`` (None values count as not given), each checked.
    An option the method does not take is an error naming the ones it does take."""
    out = dict(defaults)
    for key, value in given.items():
        if value is None:
            continue
        if key == "p" and "drop" in defaults:
            key = "drop"  # DARE's --p is its drop rate
        flag = CHECKS[key][0] if key in CHECKS else f"--{key}"
        if key not in defaults:
            takes = ", ".join(CHECKS[k][0] for k in defaults if k != "masks") or "no options"
            raise ConfigError(f"{flag} does not apply to --method {method}; it takes {takes}.")
        out[key] = CHECKS[key][1](flag, value)
    return out

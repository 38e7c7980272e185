"""Typed, validated configuration dataclasses.

Every config class subclasses ``Config``: its fields carry type annotations and a one-line
docstring in ``metadata={"help": ...}``; ``__post_init__`` checks every value's type (so a
preset file or a ``--set key=value`` override of the wrong type fails with one clear line) and
subclasses add range checks in ``validate()``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import tomllib
import typing
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

from .errors import ConfigError
from .registry import did_you_mean

PRESETS = ("quick", "default", "full")

# The dotted path of the config being built (``studies.weight-delta.finetune.``), so an error in
# a nested config names the setting the user wrote, not the class that holds it.
_PATH: ContextVar[str] = ContextVar("taskloc_config_path", default="")


def field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (shown by `taskloc studies --verbose` and in errors)."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return value in get_args(annotation)
    if origin is list:
        (item,) = get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key_t, val_t = get_args(annotation)
        return isinstance(value, dict) and all(_type_ok(k, key_t) and _type_ok(v, val_t) for k, v in value.items())
    if origin is typing.Union or str(origin) == "types.UnionType":
        return any(_type_ok(value, a) for a in get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _widen_ints(value: Any, annotation: Any) -> Any:
    """An int where a float is expected becomes a float, also inside lists and dicts, so that
    ``[0.01, 1]`` means two fractions and never a fraction and a count."""
    origin = get_origin(annotation)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list and isinstance(value, list):
        (item,) = get_args(annotation)
        return [_widen_ints(v, item) for v in value]
    if origin is dict and isinstance(value, dict):
        _, val_t = get_args(annotation)
        return {k: _widen_ints(v, val_t) for k, v in value.items()}
    return value


def _all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    return True


_UNSET = object()  # a setting the preset does not name


def _describe(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


@dataclasses.dataclass
class Config:
    """Base class; see module docstring."""

    # Where this config sits when it is built directly rather than from a file or --set (e.g.
    # "model."); ``from_dict`` knows the real path and overrides it.
    section: ClassVar[str] = ""

    def key(self, name: str) -> str:
        """The full dotted name of setting ``name``, as a user writes it in --set or a file."""
        return (getattr(self, "_path", None) or _PATH.get() or self.section) + name

    def __post_init__(self) -> None:
        object.__setattr__(self, "_path", _PATH.get() or self.section)
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            annotation = hints[f.name]
            value = _widen_ints(getattr(self, f.name), annotation)
            object.__setattr__(self, f.name, value)
            where = self.key(f.name)
            if not _type_ok(value, annotation):
                raise ConfigError(
                    f"config value {where}={value!r} has the wrong type: "
                    f"expected {_describe(annotation)}; fix the preset file or the --set override."
                )
            if not _all_finite(value):
                raise ConfigError(f"config value {where}={value!r} is not a finite number; give a real value.")
        self.validate()

    def validate(self) -> None:
        """Range checks; subclasses raise ConfigError naming the field, the value and the fix."""

    def set_by_user(self, name: str, preset: str) -> bool:
        """Whether setting ``name`` holds a value the user chose (config file or --set) rather than
        the one preset ``preset`` alone gives it (the preset's value, else this field's default).
        Compared by value, not by where it was written: a config file copied from the preset
        leaves its settings defaults, and a user value equal to the preset's runs the same anyway."""
        node: Any = load_preset(preset) if preset in PRESETS else {}
        for part in self.key(name).split("."):
            node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
        if node is _UNSET:
            f = next(f for f in dataclasses.fields(self) if f.name == name)
            node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        return getattr(self, name) != _widen_ints(node, typing.get_type_hints(type(self))[name])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Stable short hash of the config, used to key cached artefacts."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> Config:
        """Build from a plain dict; unknown keys are errors with did-you-mean; nested Config
        fields are built recursively."""
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                raise ConfigError(did_you_mean(f"{where}{key}", [f"{where}{n}" for n in names], "config key"))
            annotation = hints[key]
            if isinstance(annotation, type) and issubclass(annotation, Config):
                if not isinstance(value, dict):
                    raise ConfigError(f"config value {where}{key} must be a table of settings, got {value!r}.")
                # Settings not given keep this field's own default (e.g. a study's fine-tuning
                # schedule), not the nested class's generic defaults.
                f = next(f for f in dataclasses.fields(cls) if f.name == key)
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                base = default.to_dict() if isinstance(default, Config) else {}
                value = annotation.from_dict({**base, **value}, f"{where}{key}.")
            kwargs[key] = value
        token = _PATH.set(where)
        try:
            return cls(**kwargs)
        finally:
            _PATH.reset(token)

    @classmethod
    def describe_fields(cls, where: str = "") -> list[tuple[str, Any, str]]:
        """(dotted name, default, help) for every setting, nested configs expanded: what
        `taskloc studies --verbose` prints."""
        rows: list[tuple[str, Any, str]] = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            annotation = hints[f.name]
            if isinstance(annotation, type) and issubclass(annotation, Config):
                rows.append((f"{where}{f.name}", "", f.metadata.get("help", "")))
                for name, value, text in annotation.describe_fields(f"{where}{f.name}."):
                    nested = getattr(default, name.rsplit(".", 1)[-1], value) if isinstance(default, Config) else value
                    rows.append((name, nested, text))
            else:
                rows.append((f"{where}{f.name}", default, f.metadata.get("help", "")))
        return rows


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (["a","b","c"], parsed VALUE). VALUE is read as JSON when it parses
    (numbers, true/false, lists), else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. --set pretrain.steps=200).")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a table of settings.")
        node[path[-1]] = value
    return out


def load_preset(name: str) -> dict[str, Any]:
    """The preset's settings as a dict (presets are TOML files shipped in taskloc/presets)."""
    if name not in PRESETS:
        raise ConfigError(did_you_mean(name, list(PRESETS), "preset"))
    text = resources.files("taskloc.presets").joinpath(f"{name}.toml").read_text()
    return tomllib.loads(text)


def load_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass a TOML file made from a preset.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8 TOML.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}.") from None

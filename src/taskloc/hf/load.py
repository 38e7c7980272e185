"""load_hf_model: a local Hugging Face folder -> HFModel, offline, with no remote code.

Everything a user can get wrong (no folder, no config.json, an unsupported architecture, missing
or pickle-only weights, tensors the checkpoint lacks) is checked from the files before
transformers is asked to load anything, and reported as one CheckpointError line.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import torch
from safetensors import SafetensorError

from ..attention import ATTENTION
from ..device import pick_device
from ..errors import CheckpointError, ConfigError, UnsupportedModelError
from ..io.resolve import locate_weights, no_weights
from . import attention as hf_attention
from .families import FAMILIES
from .wrapper import HFModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip
# Errors transformers/safetensors raise for a bad checkpoint (not for bugs in taskloc).
_LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, KeyError, SafetensorError)


def load_hf_model(
    path: Union[str, Path],
    device: str = "auto",
    dtype: Union[str, torch.dtype, None] = None,
    allow_pickle: bool = False,
    attention: str = "dense",
) -> HFModel:
    """Load the model in the local folder ``path`` and wrap it with taskloc's hook sites.

    device: "auto" (CUDA when present), "cpu" or "cuda[:N]".
    dtype: None picks float32 on CPU and the checkpoint's own dtype on CUDA; else "auto",
        "float32"/"bfloat16"/"float16" (or fp32/bf16/fp16) or a torch.dtype.
    allow_pickle: accept pytorch_model.bin weights, which can run code when unpickled.
    attention: the kernel of ``taskloc.attention.ATTENTION`` every layer runs ("dense" by default).
    """
    ATTENTION.get(attention)  # unknown kernel -> did-you-mean error before anything is read
    folder = _check_folder(Path(path).expanduser())
    config = _read_config(folder)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        archs = config.get("architectures") or []
        named = f" ({', '.join(archs)})" if archs else ""
        raise UnsupportedModelError(
            f"{folder}/config.json describes a {model_type!r} model{named}, which taskloc's HF adapter "
            f"cannot map onto hook sites; supported model_type values: {', '.join(sorted(FAMILIES.names()))}."
        )
    pickle_only = _check_weights(folder, allow_pickle)
    device_ = pick_device(device)
    torch_dtype = _resolve_dtype(dtype, device_)
    kind = _kind(model_type, config)

    transformers = _import_transformers()
    hf_attention.register()
    auto = {
        "causal-lm": transformers.AutoModelForCausalLM,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "encoder": transformers.AutoModel,
    }[kind]
    extra = {"add_pooling_layer": False} if kind == "encoder" else {}  # the pooler feeds no site
    try:
        with _quiet(transformers):
            hf, info = auto.from_pretrained(
                folder,
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=not pickle_only,
                attn_implementation=hf_attention.IMPLEMENTATION,
                dtype=torch_dtype,
                output_loading_info=True,
                **extra,
            )
    except _LOAD_ERRORS as e:
        raise CheckpointError(f"could not load the model in {folder}: {_one_line(e)}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise CheckpointError(
            f"the weights in {folder} lack {len(missing)} tensor(s) that a {model_type} {kind} model needs ({shown}); "
            "the checkpoint is incomplete or was saved from a different architecture."
        )
    hf.to(device_).eval()
    return HFModel(hf, kind=kind, tokenizer=_load_tokenizer(folder, transformers), attention=attention)


def _check_folder(folder: Path) -> Path:
    if not folder.exists():
        raise CheckpointError(
            f"model folder {folder} does not exist; pass a local Hugging Face model folder "
            "(config.json and model.safetensors)."
        )
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is a file, not a folder; a Hugging Face model is a folder holding config.json "
            "and model.safetensors."
        )
    if not (folder / "config.json").is_file():
        if (folder / "adapter_config.json").is_file():
            raise CheckpointError(
                f"{folder} is a PEFT adapter (adapter_config.json), not a full model; load its base "
                "model folder, or graft the adapter onto it first."
            )
        raise CheckpointError(
            f"{folder} is not a Hugging Face model folder: it has no config.json; expected config.json "
            "next to model.safetensors (or model.safetensors.index.json and its shards)."
        )
    return folder


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a text file; expected the model's JSON config.") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise CheckpointError(
            f"{path} has no \"model_type\" field, so the architecture is unknown; "
            f"supported model_type values: {', '.join(sorted(FAMILIES.names()))}."
        )
    return config


def _check_weights(folder: Path, allow_pickle: bool) -> bool:
    """Returns True when only pickle weights exist (and are allowed)."""
    found = locate_weights(folder, allow_pickle)
    if found is None:
        raise no_weights(folder)
    return found[0] == "pickle"


def _resolve_dtype(dtype: Union[str, torch.dtype, None], device: torch.device) -> Union[str, torch.dtype]:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        # Half precision on CPU is slow and some kernels lack it; on a GPU keep what was saved.
        return torch.float32 if device.type == "cpu" else "auto"
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def _kind(model_type: str, config: dict) -> str:
    family = FAMILIES.get(model_type)
    if family.kind == "causal-lm":
        return "causal-lm"
    # An encoder saved with its MLM head gives vocabulary logits; any other head (classifier, ...)
    # is task-specific, so load the bare encoder and let forward return hidden states.
    archs = config.get("architectures") or []
    return "masked-lm" if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs) else "encoder"


def _import_transformers():
    try:
        import transformers
        from transformers import AttentionInterface  # noqa: F401
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
    except ImportError:
        raise ConfigError(
            "loading a Hugging Face model needs a recent transformers (5.x; with AttentionInterface and "
            "masking_utils); install it with: pip install 'taskloc[hf]' 'transformers>=5'"
        ) from None
    return transformers


def _load_tokenizer(folder: Path, transformers):
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None  # a weights-only folder is fine: callers feed token ids
    try:
        with _quiet(transformers):
            return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except _LOAD_ERRORS as e:
        raise CheckpointError(f"{folder} has tokenizer files that could not be loaded: {_one_line(e)}") from None


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """Silence transformers' load-time chatter (warnings, progress bars); the problems it would
    warn about (missing tensors) are checked and reported by us."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

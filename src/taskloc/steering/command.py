"""`taskloc steer extract` and `taskloc steer generate`: the bodies behind the CLI verbs.

Heavy imports (torch, the model loader) happen inside the commands, so `taskloc --help` stays fast.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from ..progress import console

steer_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                        help="Activation steering: extract a direction from pairs, generate with it.")
MODEL_HELP = "a taskloc run directory or model .safetensors, or a local Hugging Face causal-LM folder with its tokenizer"


@steer_app.command("extract")
def extract(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    pairs: Path = typer.Option(..., help='JSONL, one {"prompt", "positive", "negative"} per line (at least 2)'),
    layer: int = typer.Option(..., help="block whose output is read (0-based: blocks.L.hook_resid_post = HF hidden_states[L+1])"),
    method: str = typer.Option("last", help="last (last token) | mean (mean over completion tokens) | pca (top direction of the differences)"),
    out: Path | None = typer.Option(None, help="vector file to write (default: PAIRS with suffix .L{layer}.safetensors)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="accept pickle checkpoints (they can run code when loaded)"),
) -> None:
    """Mean positive-minus-negative residual difference at one layer, saved as safetensors with metadata."""
    from ..errors import DataError
    from ..models import load_model
    from .data import read_pairs
    from .extract import METHODS, extract_vector
    from .vector import check_layer

    if method not in METHODS:
        raise DataError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}.")
    records = read_pairs(pairs)  # bad files fail before the model loads
    loaded = load_model(model, device=device, allow_pickle=allow_pickle)
    check_layer(loaded.model, layer)
    loaded.model.eval()
    vec = extract_vector(loaded.model, records, layer, method)
    path = vec.save(out or pairs.with_suffix(f".L{layer}.safetensors"))
    console.print(f"vector: {path} (layer {layer}, {vec.n_pairs} pairs, method {method}, norm {vec.norm:.4g}, "
                  f"d = {vec.d_model})", highlight=False)


@steer_app.command("generate")
def generate(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    vector: Path = typer.Option(..., help="a vector written by `taskloc steer extract`"),
    prompts: Path = typer.Option(..., help='JSONL, one {"prompt"} per line'),
    gamma: float | None = typer.Option(None, help="steering strength (positive: toward the positive completions)"),
    kl_budget: float | None = typer.Option(None, help="choose gamma as the largest whose mean next-token KL on the calibration prompts stays within this many nats"),
    calibration: Path | None = typer.Option(None, help="JSONL prompts for --kl-budget (default: the --prompts themselves)"),
    negative: bool = typer.Option(False, "--negative", help="with --kl-budget: calibrate against the vector (gamma < 0)"),
    max_new_tokens: int = typer.Option(64, help="longest completion"),
    out: Path | None = typer.Option(None, help="write JSONL here (default: stdout)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="accept pickle checkpoints (they can run code when loaded)"),
) -> None:
    """Greedy generation with gamma * v added at the vector's layer, last position, every step."""
    import torch

    from ..errors import ConfigError
    from ..io.atomic import write_text
    from ..models import load_model
    from .calibrate import calibrate_gamma
    from .data import read_prompts
    from .inject import steering
    from .text import decode_ids, eos_id, generated_length, group_by_length, prompt_ids
    from .vector import load_vector

    if (gamma is None) == (kl_budget is None):
        raise ConfigError("give exactly one of --gamma G or --kl-budget B.")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={max_new_tokens} must be at least 1.")
    texts = read_prompts(prompts)
    calib = read_prompts(calibration) if calibration is not None else texts
    vec = load_vector(vector)
    loaded = load_model(model, device=device, allow_pickle=allow_pickle)
    lm = loaded.model.eval()
    vec.check_fits(lm, str(vector))
    if kl_budget is not None:
        batches = [ids for _, ids in group_by_length([prompt_ids(lm, t) for t in calib])]
        cal = calibrate_gamma(lm, vec, batches, kl_budget, sign=-1 if negative else 1)
        gamma = cal.gamma
        note = "" if cal.reached else " (the budget was never reached up to the search's limit)"
        console.print(f"gamma = {gamma:.4g} from a KL budget of {kl_budget:g} nats (mean KL {cal.kl:.4g}){note}", highlight=False)
    stop = eos_id(lm)
    rows: list[dict] = [{} for _ in texts]
    start = time.perf_counter()
    with torch.no_grad(), steering(lm, vec, float(gamma)):
        for idx, ids in group_by_length([prompt_ids(lm, t) for t in texts]):
            new = lm.generate(ids.to(lm.device), max_new_tokens, eos_id=stop).cpu()  # (B, n)
            for i, row in zip(idx, new.tolist()):
                rows[i] = {"prompt": texts[i], "completion": decode_ids(lm, row), "tokens": generated_length(row, stop)}
    seconds = time.perf_counter() - start
    for row in rows:
        row["gamma"] = float(gamma)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if out is None:
        sys.stdout.write(text)
    else:
        write_text(out, text)
        console.print(f"completions: {out}", highlight=False)
    total = sum(r["tokens"] for r in rows)
    console.print(f"{len(rows)} prompts, {total} tokens in {seconds:.2f} s ({total / max(seconds, 1e-9):.1f} tokens/s), "
                  f"gamma {gamma:.4g} at layer {vec.layer}", highlight=False)

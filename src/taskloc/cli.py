"""The taskloc command line: one thin map of verbs to importable, typed functions.

Every TasklocError becomes one line on stderr and exit code 2; nothing else is caught, so a bug
still shows its traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import typer

from .errors import TasklocError
from .progress import console

ALLOW_PICKLE_HELP = "accept pickle checkpoints (.bin/.pt, pytorch_model.bin): loading one can run code, so only from a trusted source"
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure whether task-relevant changes concentrate in small regions of a model.")


@app.command()
def run(
    studies: list[str] = typer.Argument(None, help="studies to run (default: all); see `taskloc studies`"),
    preset: str = typer.Option("default", help="quick (tests, <1 min) | default (minutes on 2 cores) | full (GPU-sized)"),
    out: Path | None = typer.Option(None, help="run directory (default: runs/PRESET)"),
    config: Path | None = typer.Option(None, help="TOML file overriding the preset"),
    set_: list[str] = typer.Option([], "--set", help="override one setting, e.g. --set pretrain.steps=500"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    model: Path | None = typer.Option(None, help="study this model instead of pretraining TinyLM: a taskloc run "
                                         "directory or .safetensors, or a local HF causal-LM folder with its tokenizer"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=ALLOW_PICKLE_HELP),
    executor: str | None = typer.Option(None, help="where independent jobs run: inprocess (default) | ray (pip install "
                                        "'taskloc[ray]'; a local Ray, or --set run.ray_address=ADDRESS); same as --set run.executor=..."),
) -> None:
    """Run studies on the embedded default (or on --model) and write results.json and report.html."""
    from .runner import run_studies

    run_dir = run_studies(studies or [], preset=preset, out=out, config_file=config, overrides=set_, device=device,
                          model=model, allow_pickle=allow_pickle, executor=executor)
    console.print(f"report: {run_dir / 'report.html'}")


@app.command("studies")
def list_studies(verbose: bool = typer.Option(False, "--verbose", "-v", help="also list every setting with its default and help")) -> None:
    """List the studies, the claims each tests (docs/claims.md) and, with --verbose, every setting."""
    from .runner import describe_studies

    describe_studies(verbose)


@app.command()
def claims(markdown: bool = typer.Option(False, "--markdown", help="print the raw Markdown (docs/claims.md)")) -> None:
    """What each published claim (C0-C6) asserts, its source, the study that tests it and the rule that decides it."""
    from .claims import claims_markdown

    text = claims_markdown()
    if markdown:
        print(text)
        return
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown(text))


@app.command()
def tasks() -> None:
    """List the built-in synthetic tasks."""
    from rich.console import Console

    from .tasks import TASKS

    listing = Console()  # stdout: a listing, unlike progress and errors
    for name in TASKS.names():
        listing.print(f"[bold]{name:8}[/bold] {TASKS.get(name).description}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory holding results.json"),
           markdown: bool = typer.Option(False, "--markdown", help="print a Markdown summary (verdicts, preconditions, notes) instead")) -> None:
    """Rebuild report.html from a run directory's results.json (no recomputation), or print its summary."""
    from .report import rebuild_report

    if markdown:
        from .report.html import read_results
        from .report.markdown import summary_markdown

        print(summary_markdown(read_results(run_dir)), end="")
        return
    console.print(f"report: {rebuild_report(run_dir)}")


@app.command()
def sites(
    model: Path = typer.Argument(..., help="a taskloc run directory or model .safetensors, or a local Hugging Face folder"),
    prompt: str = typer.Option("A:12+34=", help="text to run through the model"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=ALLOW_PICKLE_HELP),
) -> None:
    """List a model's hook sites with their shapes and last-token statistics on one prompt."""
    from .activations.sites import describe_sites

    describe_sites(model, prompt, device, allow_pickle=allow_pickle)


@app.command()
def activations(
    model: Path = typer.Argument(..., help="a taskloc run directory or model .safetensors, or a local Hugging Face folder with its tokenizer"),
    prompts: Path = typer.Option(..., help="JSONL, one object per line: text, difficulty (a number), optional label (familiar/unfamiliar)"),
    sites: list[str] = typer.Option([], "--sites", help="hook sites or glob patterns (repeatable; default blocks.*.hook_resid_post); see `taskloc sites`"),
    out: Path | None = typer.Option(None, help="directory for activations.json and activations.html"),
    convention: str = typer.Option("taskloc", help="metric convention: taskloc (ours) | paper (the authors' code)"),
    batch_size: int = typer.Option(16, help="prompts per forward pass"),
    levels: int = typer.Option(8, help="at most this many difficulty levels (more distinct values are binned by quantile)"),
    all_tokens: bool = typer.Option(True, "--all-tokens/--last-token-only", help="also profile every real token (slower)"),
    permutations: int = typer.Option(1000, help="permutations for each Spearman p-value"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=ALLOW_PICKLE_HELP),
) -> None:
    """Sparsity of activations by difficulty: per-site metrics with bootstrap intervals, Spearman
    correlation with difficulty, and the sites and hidden dimensions that change most."""
    from .activations.command import run_activations

    run_activations(model, prompts, sites=sites or None, out=out, device=device, convention=convention,
                    batch_size=batch_size, levels=levels, all_tokens=all_tokens, permutations=permutations,
                    allow_pickle=allow_pickle)
    if out is not None:
        console.print(f"json: {out / 'activations.json'}\nhtml: {out / 'activations.html'}")


# --- checkpoint verbs (delta, graft, merge, ...) are added below this line ---


@app.command()
def delta(
    base: Path = typer.Argument(..., help="base checkpoint: .safetensors file, HF folder, run directory (or .bin/.pt with --allow-pickle)"),
    tuned: Path = typer.Argument(..., help="tuned checkpoint of the same architecture, or a PEFT LoRA adapter folder"),
    top: str = typer.Option("1%", help="global top-k: a percent (1%), a fraction of all entries (0.01 = 1%) or a count (1000)"),
    patch: Path | None = typer.Option(None, help="write the top-k entries as a sparse patch (.safetensors)"),
    json_out: Path | None = typer.Option(None, "--json", help="write the full report as JSON"),
    html: Path | None = typer.Option(None, help="write an HTML page with the curves and profiles"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]: where deltas, histograms and SVDs are computed"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=ALLOW_PICKLE_HELP),
    rank_max_dim: int | None = typer.Option(None, help="effective rank only for matrices up to this size on their short side (default 1024 on CPU, 8192 on CUDA)"),
) -> None:
    """Stream two checkpoints tensor by tensor: concentration of the delta vs a dense Gaussian null,
    profile by layer and module kind, exact global top-k (optionally written as a patch)."""
    from .deltas import delta_checkpoints
    from .deltas.render import print_report

    report = delta_checkpoints(base, tuned, top=top, patch=patch, json_out=json_out, html_out=html, device=device,
                               allow_pickle=allow_pickle, rank_max_dim=rank_max_dim)
    print_report(report)
    for label, path in (("patch", patch), ("json", json_out), ("html", html)):
        if path is not None:
            console.print(f"{label}: {path}")


@app.command()
def graft(
    base: Path = typer.Argument(..., help="the base checkpoint the patch was made from"),
    patch: Path = typer.Argument(..., help="a patch written by `taskloc delta --patch`; with --select, the tuned checkpoint"),
    out: Path = typer.Option(..., help="output: a .safetensors file for a single-file base, a new folder for an HF folder"),
    scale: float = typer.Option(1.0, help="write base + scale * (patch - base); 1 gives the patched entries exactly"),
    allow_fingerprint_mismatch: bool = typer.Option(False, "--allow-fingerprint-mismatch", help="apply even if the base is not the one the patch was made from"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=ALLOW_PICKLE_HELP),
    select: str | None = typer.Option(None, help="choose the entries of TUNED - BASE here: magnitude | random | dare (random, "
                                      "grafted at scale n/k) | saliency | learned (the last two run BASE on --data)"),
    top: str | None = typer.Option(None, help="with --select: how many entries, a percent (1%), a fraction (0.01) or a count (default 1%)"),
    data: Path | None = typer.Option(None, help="with --select saliency|learned: JSONL of {\"prompt\", \"target\"} training examples (never the evaluation split)"),
    seed: int = typer.Option(0, help="with --select: seed of random/dare masks and of the learned mask's batches"),
    steps: int | None = typer.Option(None, help="with --select learned: optimisation steps (default 200)"),
    device: str = typer.Option("auto", help="with --select saliency|learned: where the model runs (auto | cpu | cuda[:N])"),
) -> None:
    """Apply a sparse patch to a base checkpoint, keeping the base's layout and dtypes; or, with
    --select, choose k entries of TUNED - BASE by a rule and graft them."""
    if select is not None:
        from .deltas.select_graft import graft_selected

        chosen = graft_selected(base, patch, out, rule=select, top=top or "1%", data=data, seed=seed, steps=steps,
                                scale=scale, device=device, allow_pickle=allow_pickle)
        console.print(f"grafted {chosen.k:,} of {chosen.n:,} entries chosen by {chosen.rule} at scale {chosen.scale:g}: {chosen.out}",
                      highlight=False)
        return
    if top is not None or data is not None or steps is not None:
        from .errors import ConfigError

        raise ConfigError("--top, --data and --steps choose entries and need --select; a patch's entries are already chosen.")
    from .deltas import graft_checkpoint

    result = graft_checkpoint(base, patch, out, scale=scale, allow_pickle=allow_pickle,
                              allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    warn = "" if result.fingerprint_matched else " (base fingerprint did not match; applied on request)"
    console.print(f"grafted {result.patched_entries:,} entries in {result.patched_tensors} tensors{warn}: {result.out}")


@app.command()
def merge(
    base: Path = typer.Argument(..., help="base model: .safetensors file or HF folder (or .bin/.pt with --allow-pickle)"),
    models: list[Path] = typer.Argument(..., help="models to merge, fine-tuned from the base (full checkpoints or PEFT LoRA adapters)"),
    method: str = typer.Option(..., help="task_arithmetic | ties | dare_linear | dare_ties | slerp | core_isolation"),
    out: Path = typer.Option(..., help="output: a .safetensors file for a single-file base, a new folder for an HF folder"),
    lambda_: float | None = typer.Option(None, "--lambda", help="scale of the merged task vector (task_arithmetic, ties, dare_*; default 1)"),
    weights: str | None = typer.Option(None, help="one weight per model, comma-separated (task_arithmetic, ties, dare_*; default 1 each)"),
    k: str | None = typer.Option(None, help="ties: percent of each task vector kept by magnitude, in (0, 100] (default 20%)"),
    trim: str | None = typer.Option(None, help="ties: top-k per tensor (tensor, default, as mergekit) or over the whole model (global)"),
    p: str | None = typer.Option(None, help="dare_*: drop percent in [0, 100) (default 90%); core_isolation: core percent in (0, 100] (default 1%)"),
    seed: int | None = typer.Option(None, help="dare_*: seed of the drop masks (default 0)"),
    t: float | None = typer.Option(None, help="slerp: interpolation from BASE (0) to the model (1) (default 0.5)"),
    noncore: str | None = typer.Option(None, help="core_isolation: non-core values by slerp (default), linear (mean) or base"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="accept pickle checkpoints (they can run code when loaded)"),
) -> None:
    """Merge models fine-tuned from one base, streaming one tensor at a time; the output keeps the base's format."""
    from .merge import merge_checkpoints

    options = {"lambda_": lambda_, "weights": weights, "k": k, "trim": trim, "p": p, "seed": seed, "t": t, "noncore": noncore}
    result = merge_checkpoints(base, models, method=method, out=out, options=options, allow_pickle=allow_pickle)
    console.print(f"merged {len(models)} models into {result.out} with {method} ({result.describe_options()})", highlight=False)


@app.command()
def cores(
    base: Path = typer.Argument(..., help="base model the others were fine-tuned from"),
    models: list[Path] = typer.Argument(..., help="fine-tuned models (full checkpoints or PEFT LoRA adapters)"),
    p: str = typer.Option("1%", help="core = the global top p% of |model - base|, p in (0, 100]"),
    tau: float = typer.Option(0.1, help="models whose cores overlap with Jaccard >= tau are grouped"),
    json_out: Path | None = typer.Option(None, "--json", help="write sizes, overlaps and groups as JSON"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="accept pickle checkpoints (they can run code when loaded)"),
) -> None:
    """Core regions per model (CPI-FT): their Jaccard overlap matrix and the groups they form."""
    from .io.atomic import write_json
    from .merge import cores_of_paths
    from .merge.render import print_cores

    report = cores_of_paths(base, models, p=p, tau=tau, allow_pickle=allow_pickle)
    print_cores(report)
    if json_out is not None:
        write_json(json_out, report.to_json())
        console.print(f"json: {json_out}")


from .steering.command import steer_app  # noqa: E402 (typer only; the verbs import torch lazily)

app.add_typer(steer_app, name="steer")


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except TasklocError as exc:
        from rich.markup import escape  # a message's own brackets (pip install 'taskloc[ray]') are text, not markup

        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(2)

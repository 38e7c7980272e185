"""The taskloc command line: one thin map of verbs to importable, typed functions.

Every TasklocError becomes one line on stderr and exit code 2; nothing else is caught, so a bug
still shows its traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import click
import typer

from .errors import TasklocError
from .progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure whether task-relevant changes concentrate in small regions of a model.")


@app.command()
def run(
    studies: List[str] = typer.Argument(None, help="studies to run (default: all); see `taskloc studies`"),
    preset: str = typer.Option("default", help="quick (tests, <1 min) | default (minutes on 2 cores) | full (GPU-sized)"),
    out: Optional[Path] = typer.Option(None, help="run directory (default: runs/PRESET)"),
    config: Optional[Path] = typer.Option(None, help="TOML file overriding the preset"),
    set_: List[str] = typer.Option([], "--set", help="override one setting, e.g. --set pretrain.steps=500"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
) -> None:
    """Run studies on the embedded default and write results.json and report.html."""
    from .runner import run_studies

    run_dir = run_studies(studies or [], preset=preset, out=out, config_file=config, overrides=set_, device=device)
    console.print(f"report: {run_dir / 'report.html'}")


@app.command("studies")
def list_studies() -> None:
    """List the studies and the claims each one tests."""
    from .runner import describe_studies

    describe_studies()


@app.command()
def tasks() -> None:
    """List the built-in synthetic tasks."""
    from .tasks import TASKS

    for name in TASKS.names():
        console.print(f"[bold]{name:8}[/bold] {TASKS.get(name).description}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory holding results.json")) -> None:
    """Rebuild report.html from a run directory's results.json (no recomputation)."""
    from .report import rebuild_report

    console.print(f"report: {rebuild_report(run_dir)}")


# --- checkpoint verbs (delta, graft, merge, ...) are added below this line ---


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except TasklocError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(2)

"""The embedded default base: a TinyLM that taskloc pretrained itself, shipped with the package.

Pretraining the default base takes about 18 minutes on 2 CPU cores, more than half of the
`make run` budget, and its bytes differ in the last bits between CPUs (so a competence
precondition can flip between machines). The package therefore carries the base that
`taskloc run --preset default` trained, in ``taskloc/embedded/base-<key>/`` under the same
content key the artefact cache uses (config + training data + the source of the training code).
A run whose base key matches copies it into its own ``artefacts/`` instead of pretraining; any
change to the config, the tasks or the training code gives another key, and the run pretrains
as before. Nothing is ever reused under a key it was not built for.

``TASKLOC_EMBEDDED_BASE=0`` turns the shortcut off (the run pretrains its own base, e.g. to check
on your machine that the shipped one is what this code trains). ``python -m taskloc.studies.embedded
RUN_DIR`` refreshes the shipped copy from a finished default run after an edit to the training code.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..io.atomic import atomic_path, write_text
from .cache import TENSORS

EMBEDDED_ROOT = Path(__file__).resolve().parents[1] / "embedded"
# what a shipped base folder holds: the weights and the learning curve the base-model study plots
SHIPPED_FILES = (TENSORS.filename, "history.json")
ORIGIN = "origin.txt"  # written beside a copied base, so the report can say where the base came from


def enabled() -> bool:
    return os.environ.get("TASKLOC_EMBEDDED_BASE", "1") != "0"


def shipped_folder(folder_name: str) -> Path | None:
    """The shipped copy of artefact folder ``base-<key>``, if the package carries one."""
    path = EMBEDDED_ROOT / folder_name
    return path if all((path / f).exists() for f in SHIPPED_FILES) else None


def seed_from_embedded(folder: Path) -> bool:
    """Copy the shipped base into the run's artefact ``folder`` (named ``base-<key>``) when the
    package carries one under that exact key and the run has none yet. Returns whether it did.
    The weights are written last, so a copy killed half-way is never taken for a finished one."""
    if not enabled() or (folder / TENSORS.filename).exists():
        return False
    source = shipped_folder(folder.name)
    if source is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / ORIGIN, f"copied from the base shipped with taskloc ({source.name}); TASKLOC_EMBEDDED_BASE=0 retrains\n")
    for name in reversed(SHIPPED_FILES):  # history first, weights (the "finished" marker) last
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(source / name, tmp)
    return True


def origin_of(folder: Path) -> str | None:
    """Where the base in artefact ``folder`` came from, if it was copied from the package."""
    path = folder / ORIGIN
    return path.read_text().strip() if path.exists() else None


def refresh(run_dir: Path) -> Path:
    """Replace the shipped base by the base of the finished run in ``run_dir``."""
    bases = sorted(p for p in (run_dir / "artefacts").glob("base-*") if all((p / f).exists() for f in SHIPPED_FILES))
    if len(bases) != 1:
        raise SystemExit(f"{run_dir}/artefacts holds {len(bases)} finished base models; expected exactly one.")
    shutil.rmtree(EMBEDDED_ROOT, ignore_errors=True)
    target = EMBEDDED_ROOT / bases[0].name
    target.mkdir(parents=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(bases[0] / name, target / name)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m taskloc.studies.embedded RUN_DIR  (a finished `taskloc run --preset default`)")
    print(f"shipped base is now {refresh(Path(sys.argv[1]))}")

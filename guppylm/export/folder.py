"""What every export shares: a checked run folder in, and an output written all at once.

An export is built in a hidden temporary folder beside OUT and renamed into place only when
it is complete, so an error (or Ctrl-C) never leaves half an export behind, and an existing
OUT is replaced only with `--force`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from guppylm.errors import GuppyError

INSTALL = "install them with `pip install 'guppylm[export]'`"


def need(*modules: str, purpose: str) -> None:
    """Fail with one line when an optional package an export uses is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise GuppyError(f"{purpose} needs the package '{name}', which is missing; "
                             f"{INSTALL}") from None


def check_out(out: Path, force: bool) -> None:
    """Refuse an OUT that holds something already, unless `force` says to replace it."""
    if out.is_file():
        raise GuppyError(f"{out}: is a file, not a folder; choose a new folder")
    if out.exists() and not force and any(out.iterdir()):
        raise GuppyError(f"{out}: exists and is not empty; choose a new folder, or add "
                         "--force to replace it")


@contextmanager
def building(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it becomes `out`.

        with building(Path("out/guppy-hf")) as tmp:
            (tmp / "config.json").write_text(...)
    """
    out = Path(out)
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # left only when something failed


def replace_folder(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an old `out` is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Writing files so that a crash never leaves half of one: each is written under a
temporary name beside its place, then renamed into it (a rename within a folder is atomic).
Readers see the old file or the new one, never a mix."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# What to write: text (UTF-8), bytes, or a function that writes the file at the path it is
# given (e.g. `lambda tmp: fig.savefig(tmp, format="png")`).
Content = str | bytes | Callable[[Path], None]


def atomic_write(path: Path, content: Content) -> None:
    """Write one file atomically."""
    atomic_write_all({Path(path): content})


def atomic_write_all(files: dict[Path, Content]) -> None:
    """Write several files, renaming them into place only once all are written: an error
    or an interruption while writing leaves every earlier file as it was."""
    temps = {Path(path): _temporary(Path(path)) for path in files}
    try:
        for content, tmp in zip(files.values(), temps.values(), strict=True):
            if isinstance(content, str):
                tmp.write_text(content, encoding="utf-8")
            elif isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                content(tmp)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)  # left only when something failed


def _temporary(path: Path) -> Path:
    """`runs/x/config.json` -> `runs/x/.config.json.tmp`: hidden, and in the same folder
    (a rename across file systems would not be atomic)."""
    return path.with_name(f".{path.name}.tmp")

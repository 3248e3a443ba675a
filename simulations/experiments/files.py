"""Files a run writes: atomically (a reader never sees half a file), into directories checked before any work."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from theory.validation import ConfigError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on success it replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and os.replace."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def save_atomically(state: dict, path: Path) -> None:
    """torch.save `state` to `path` atomically (a training checkpoint)."""
    import torch

    with atomic_path(path) as partial:
        torch.save(state, partial)


def read_checkpoint(path: Path, device) -> dict | None:
    """The checkpoint at `path`, or None when there is none; one that does not load is moved aside
    (`NAME.unreadable.pt`, named on stderr) and the run starts again from step 0."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # a truncated or foreign file: torch raises several error types
        aside = path.with_name(f"{path.stem}.unreadable{path.suffix}")
        os.replace(path, aside)
        print(f"{path}: does not load ({type(error).__name__}); moved to {aside.name}, training starts again", file=sys.stderr)
        return None


def _check_creatable(flag: str, path: Path) -> None:
    existing = next(parent for parent in (path.absolute(), *path.absolute().parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot create or write {str(path)!r} ({str(existing)!r} is not a writable directory)")


def check_output_directory(flag: str, path: Path, overwrite: bool) -> None:
    """An output directory must be creatable and writable, and new or empty unless `overwrite` (before any work)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag}: {str(path)!r} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"{flag}: {str(path)!r} is not empty; choose a new directory or add --overwrite")
    _check_creatable(flag, path)


def check_output_file(flag: str, path: Path) -> None:
    """An output file must not be a directory, and its folder must be creatable and writable (before any work)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag}: {str(path)!r} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag}: {str(path)!r} is not writable")
    _check_creatable(flag, path.parent)


def read_json(path: Path, setting: str) -> dict:
    """A JSON object from `path`; a file that does not parse is a ConfigError naming `setting` and the file."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{setting}: {str(path)!r} does not read as JSON ({error})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{setting}: {str(path)!r} must hold a JSON object, got {type(value).__name__}")
    return value

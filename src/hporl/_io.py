"""Reading user YAML safely and writing files atomically (shared by every part that does)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hporl.exceptions import HporlError

__all__ = ["atomic_write", "read_yaml", "write_json"]


def read_yaml(path: str | Path, *, what: str, error: type[HporlError]) -> Any:
    """``yaml.safe_load`` of a file (no Python tags); unreadable files and bad YAML raise
    ``error`` naming the file, and the line and column of the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise error(f"cannot read {what} file {str(path)!r}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{path}: invalid YAML{where}: {problem}") from None


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(temporary_path)``, then rename it over ``path``: a crash never leaves a
    half-written file where a good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, default=str)))

"""Reading user YAML safely and writing files atomically (shared by every part that does)."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hporl.exceptions import HporlError

__all__ = ["atomic_write", "explain_validation", "read_yaml", "write_json"]


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


def explain_validation(err: ValidationError, model: type[BaseModel]) -> str:
    """A pydantic error as one line naming the key; an unknown key gets the nearest valid one."""
    e = err.errors()[0]
    loc = [str(x) for x in e["loc"]]
    where = ".".join(loc)
    if e["type"] == "extra_forbidden":
        fields = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(fields)}."
        return f"unknown key {where!r}.{hint}"
    return f"{where}: {e['msg']} (got {e.get('input')!r})"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return list(getattr(current, "model_fields", {}))
        ann = field.annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else current
    return list(getattr(current, "model_fields", {}))

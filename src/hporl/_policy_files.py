"""The files of a saved :class:`~hporl.Policy`: ``policy.safetensors`` and ``policy.json``.

``policy.safetensors`` holds the weights; ``policy.json`` the description (written by
:meth:`~hporl.Policy.save`) plus the sha256 of the weights file (``checksums``) and of its own
content (``meta_sha256``: the canonical JSON, ``sort_keys=True``, of every other key), so a
truncated, altered or hand-edited policy is refused before anything is built from it. Nothing is
unpickled.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hporl._io import read_checked_json, save_tensors, sha256_file, write_checked_json
from hporl.exceptions import PolicyError

FORMAT_VERSION = 2
"""Version of the saved layout; 2 added the checksums. A policy of another version is refused."""
WEIGHTS = "policy.safetensors"
META = "policy.json"


def default_policy_dir() -> Path:
    """Where the packaged default policy lies (package data of ``hporl``)."""
    return Path(__file__).resolve().parent / "policies" / "default"


def write(directory: Path, state: dict[str, torch.Tensor], content: Mapping[str, Any]) -> Path:
    """Write the weights ``state``, then ``policy.json`` with ``content``, the versions and the
    checksums of both (each file to a temporary name, then renamed)."""

    from hporl import __version__

    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "hporl_version": __version__,
        "torch_version": torch.__version__,
        **content,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_tensors(directory / WEIGHTS, state, metadata={"format": "pt"})
    meta["checksums"] = {WEIGHTS: sha256_file(directory / WEIGHTS)}
    write_checked_json(directory / META, meta)
    return directory


def locate(directory: Path) -> Path:
    """The folder holding both files: ``directory``, or its ``policy/`` (a meta-train output).

    Raises:
        PolicyError: a file is missing.
    """
    if not (directory / META).exists() and (directory / "policy" / META).exists():
        directory = directory / "policy"
    for name in (META, WEIGHTS):
        if not (directory / name).is_file():
            raise PolicyError(f"{directory} is not a policy directory: {name} is missing")
    return directory


def read_meta(directory: Path) -> dict[str, Any]:
    """``policy.json``, checked: valid JSON, this format version, its own checksum, and a
    checksum for the weights (compared by :func:`read_weights`).

    Raises:
        PolicyError: naming the file and what to do.
    """
    path = directory / META
    meta = read_checked_json(
        path,
        error=PolicyError,
        version=FORMAT_VERSION,
        kind="policy",
        remake="re-run `hporl meta-train` to make a new policy",
        redo="re-run `hporl meta-train`",
    )
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict) or not isinstance(checksums.get(WEIGHTS), str):
        raise PolicyError(f"{path} is incomplete: it holds no checksum for {WEIGHTS}")
    return meta


def read_weights(directory: Path, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights, read once: the bytes whose sha256 is checked are the bytes loaded.

    Raises:
        PolicyError: the file cannot be read or its sha256 differs from ``meta``'s.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = directory / WEIGHTS
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PolicyError(f"cannot read {path}: {err.strerror}") from None
    if hashlib.sha256(data).hexdigest() != meta["checksums"][WEIGHTS]:
        raise PolicyError(f"{path} is corrupted or was changed: its sha256 does not match {META}")
    try:
        return load(data)
    except SafetensorError as err:
        raise PolicyError(f"{path} cannot be read: {err}") from None

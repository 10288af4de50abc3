"""Reading user YAML safely, writing files atomically, and checking files against a sha256.

Shared by every part that reads a user's file or writes one a later run will trust.

Checksums: :func:`write_checksum` puts ``<name>.sha256`` next to a file (one line in the
``sha256sum`` format, ``<hex>  <name>``, so ``sha256sum -c`` reads it too);
:func:`verify_checksum` refuses a file that is truncated, altered or lacks its sidecar::

    save_torch(path, state)
    write_checksum(path)
    ...
    verify_checksum(path, error=ConfigError)  # raises ConfigError naming the file
    state = torch.load(path, weights_only=True)

The file is renamed into place before its sidecar is written: a crash between the two leaves a
mismatch, which :func:`verify_checksum` reports, never a silently accepted half-written file.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hporl.exceptions import HporlError

__all__ = [
    "atomic_write",
    "checksum_path",
    "explain_validation",
    "read_yaml",
    "sha256_file",
    "verify_checksum",
    "writable_dir",
    "write_checksum",
    "write_json",
]

_STANDARD_TAG = "tag:yaml.org,2002:"


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python tags) that also refuses a key given twice in one mapping,
    which plain YAML loaders resolve silently by keeping the last value."""


def _construct_mapping(loader: _StrictSafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: later keys may override
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: construct_mapping reports it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictSafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


YAML_MAX_BYTES = 1_000_000
"""The largest YAML file hporl reads (experiments, benches and spaces are a few KB)."""

YAML_MAX_NODES = 100_000
"""The most values a YAML document may hold once its aliases are expanded (an "alias bomb" of
a few hundred bytes can otherwise expand to gigabytes)."""


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """How many nodes ``node`` stands for with every alias expanded, counted without expanding
    (a node met again through an alias counts its whole size again); stops past ``limit``."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if key in sizes and not children_done:
            continue
        if isinstance(current, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = (
            [n for pair in current.value for n in pair]
            if isinstance(current, yaml.MappingNode)
            else list(current.value)
        )
        if children_done:
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), limit + 1)
            continue
        if key in sizes:
            continue
        sizes[key] = 0  # a cycle (an alias inside its own anchor) counts nothing more
        stack.append((current, True))
        stack += [(c, False) for c in children if id(c) not in sizes]
    return sizes[id(node)]


def read_yaml(path: str | Path, *, what: str, error: type[HporlError]) -> Any:
    """Read a YAML file with a safe loader (no Python tags, no repeated keys), bounded in size.

    Raises:
        error: naming the file, and the line and column of the problem: an unreadable or binary
            file, one over :data:`YAML_MAX_BYTES`, invalid YAML, a tag such as
            ``!!python/object`` (refused, never constructed), a key given twice, aliases that
            expand to more than :data:`YAML_MAX_NODES` values (checked before anything expands).
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(YAML_MAX_BYTES + 1)  # never more, whatever the file is
    except OSError as err:
        raise error(f"cannot read {what} file {str(path)!r}: {err.strerror}") from None
    if len(raw) > YAML_MAX_BYTES:
        raise error(
            f"{path}: larger than {YAML_MAX_BYTES:,} bytes; hporl reads {what} files of up to "
            f"{YAML_MAX_BYTES:,} bytes"
        )
    if b"\x00" in raw[:4096]:
        raise error(f"{path}: not a YAML text file (it holds binary data)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file") from None
    try:
        loader = _StrictSafeLoader(text)  # a SafeLoader: no Python tags
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if _expanded_size(node, YAML_MAX_NODES) > YAML_MAX_NODES:
                raise error(
                    f"{path}: its aliases (*name) expand to more than {YAML_MAX_NODES:,} values; "
                    "refused before expanding them"
                )
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        tag = re.search(r"constructor for the tag '([^']*)'", problem)
        if tag:
            name = tag.group(1)
            if name.startswith(_STANDARD_TAG):
                name = "!!" + name[len(_STANDARD_TAG) :]
            raise error(
                f"{path}: YAML tag {name!r}{where} is not allowed; hporl reads plain YAML "
                "(mappings, lists, strings, numbers, booleans)"
            ) from None
        raise error(f"{path}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise error(f"{path}: invalid YAML: nested too deeply") from None


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(temporary_path)``, then rename it over ``path``: a crash never leaves a
    half-written file where a good one was.

    Raises:
        StoreError: the file cannot be written (no permission, disk full, ...); a file already
            at ``path`` is left as it was.
    """
    from hporl.exceptions import StoreError

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise StoreError(_not_written(path, err.strerror or str(err))) from None
    except Exception as err:  # torch.save and safetensors report a failed write their own way
        text = str(err).lower()
        if not any(word in text for word in ("writ", "i/o error", "os error", "no space left")):
            raise
        raise StoreError(_not_written(path, str(err).splitlines()[0])) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`.

    Serialised in memory first, then written as plain bytes: torch's own file writer reports a
    disk that fills mid-way as an internal assertion (``unexpected pos ...``), a plain write as
    the ``OSError`` it is.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda p: p.write_bytes(buffer.getbuffer()))


def save_tensors(
    path: str | Path, state: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """A safetensors file of ``state`` to ``path`` through :func:`atomic_write`, serialised in
    memory first like :func:`save_torch`."""
    from safetensors.torch import save

    data = save(state, metadata=metadata)
    atomic_write(path, lambda p: p.write_bytes(data))


def _not_written(path: Path, reason: str) -> str:
    kept = "; the previous file is unchanged" if path.exists() else ""
    return f"cannot write {path}: {reason}{kept}"


def writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check that files can be written there, before any work.

    Raises:
        StoreError: it cannot be created, or is not writable (permissions, read-only disk).
    """
    from hporl.exceptions import StoreError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create {what} {str(path)!r}: {err.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(f"{what} {str(path)!r} is not writable")
    try:  # the permission bits do not tell for root, a read-only mount or a full disk
        with tempfile.NamedTemporaryFile(dir=path, prefix=".hporl-probe-"):
            pass
    except OSError as err:
        raise StoreError(f"{what} {str(path)!r} is not writable: {err.strerror}") from None
    return path


def strict_json(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, infinities) as ``None``: strict JSON, which
    ``json.dumps`` would otherwise write as bare ``NaN`` / ``Infinity``."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    if hasattr(data, "item") and getattr(data, "shape", None) == ():  # a numpy scalar
        return strict_json(data.item())
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as strict JSON (non-finite numbers as ``null``), atomically."""
    text = json.dumps(strict_json(data), indent=2, default=str, allow_nan=False)
    atomic_write(path, lambda p: p.write_text(text))


# -- checksums ------------------------------------------------------------------------------
def meta_sha256(meta: Mapping[str, Any]) -> str:
    """The sha256 of a description's canonical JSON without the ``meta_sha256`` key itself."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_checked_json(path: Path, meta: dict[str, Any]) -> None:
    """Write a description (``policy.json``, ``model.json``) with its own checksum."""
    meta = json.loads(json.dumps(meta, default=str))  # exactly what load will read back
    meta["meta_sha256"] = meta_sha256(meta)
    write_json(path, meta)


def read_checked_json(
    path: Path,
    *,
    error: type[HporlError],
    version: int,
    kind: str,
    remake: str,
    redo: str,
) -> dict[str, Any]:
    """A description of a ``kind`` ("policy") written by :func:`write_checked_json`, checked:
    valid JSON, an object, format ``version``, its own checksum.

    Raises:
        error: naming the file and what to do: ``remake`` (another format), ``redo`` (edited).
    """
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON: {err}") from None
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror}") from None
    if not isinstance(meta, dict):
        raise error(f"{path} is not a {kind} description: expected a JSON object")
    found = meta.get("format_version")
    if found != version:
        raise error(
            f"{path}: the {kind} was saved in format_version {found!r} and this hporl reads "
            f"format {version}; {remake}"
        )
    stored = meta.get("meta_sha256")
    if stored != meta_sha256(meta):
        why = "it has no meta_sha256" if stored is None else "meta_sha256 differs from its content"
        raise error(
            f"{path} was edited by hand: its checksum does not match ({why}); restore the "
            f"saved file or {redo}"
        )
    return meta


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, as 64 hex digits (read in chunks: any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_path(path: str | Path) -> Path:
    """The sidecar that holds ``path``'s sha256: ``<name>.sha256`` in the same folder."""
    path = Path(path)
    return path.with_name(f"{path.name}.sha256")


def write_checksum(path: str | Path) -> Path:
    """Write ``<name>.sha256`` (``<hex>  <name>``, as ``sha256sum`` does) next to ``path``,
    atomically; returns the sidecar's path. Call it after the file itself is in place."""
    path = Path(path)
    sidecar = checksum_path(path)
    line = f"{sha256_file(path)}  {path.name}\n"
    atomic_write(sidecar, lambda p: p.write_text(line))
    return sidecar


def verify_checksum(
    path: str | Path, *, error: type[HporlError] = HporlError, missing_ok: bool = False
) -> bool:
    """Check ``path`` against its ``<name>.sha256`` sidecar (hex digits, or a ``sha256sum`` line).

    Args:
        error: the error type to raise (e.g. the caller's ``ConfigError`` or ``PolicyError``).
        missing_ok: with no sidecar, return ``False`` instead of raising (files written before
            checksums existed); a sidecar that is present is always enforced.

    Returns:
        ``True`` when the file matches its sidecar.

    Raises:
        error: the file or its sidecar is missing or unreadable, or the sha256 differs (the file
            is truncated, altered, or is not the one the sidecar was written for).
    """
    path = Path(path)
    sidecar = checksum_path(path)
    if not path.is_file():
        raise error(f"{path} is missing")
    try:
        text = sidecar.read_text()
    except FileNotFoundError:
        if missing_ok:
            return False
        raise error(
            f"{path} cannot be checked: its checksum file {sidecar.name} is missing; "
            "it was not written by hporl, or the checksum was removed"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not a text file"
        raise error(f"cannot read the checksum file {sidecar}: {reason}") from None
    match = re.fullmatch(r"\s*([0-9a-fA-F]{64})(?:\s+\*?(\S.*?))?\s*", text)
    if not match:
        raise error(f"{sidecar} is not a checksum file: expected 64 hex digits")
    try:
        actual = sha256_file(path)
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror}") from None
    if actual != match.group(1).lower():
        raise error(f"{path} is corrupted or was changed: its sha256 does not match {sidecar.name}")
    return True


# -- pydantic errors ------------------------------------------------------------------------
def explain_validation(err: ValidationError, model: type[BaseModel]) -> str:
    """A pydantic error as one line naming the key; an unknown key gets the nearest valid one.

    Where a value may take several forms (a union, e.g. a task given as a name or as a
    ``{csv:, target:}`` mapping), a mapping is explained against the form it fits best.
    """
    errors = err.errors()
    e = errors[0]
    path, union_at, _ = _walk(model, list(e["loc"]))
    if union_at is not None:
        prefix = tuple(e["loc"][:union_at])
        alternatives: dict[str, list[Any]] = {}
        for x in errors:
            if tuple(x["loc"][:union_at]) == prefix and len(x["loc"]) > union_at:
                alternatives.setdefault(str(x["loc"][union_at]), []).append(x)
        # forms whose errors lie inside the value (it was a mapping they could read)
        inside = {
            tag: errs
            for tag, errs in alternatives.items()
            if any(len(x["loc"]) > union_at + 1 for x in errs)
        }
        if inside:
            errs = min(inside.values(), key=len)
            e = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        else:
            where = ".".join(path[:union_at]) or "value"
            msgs = [x[0]["msg"] for x in alternatives.values()]
            return (
                f"{where}: {e.get('input')!r} fits none of the accepted forms: {'; or '.join(msgs)}"
            )
    path, _, owner = _walk(model, list(e["loc"]))
    where = ".".join(path)
    if e["type"] == "extra_forbidden":
        fields = list(getattr(owner, "model_fields", {}))
        hint = did_you_mean(path[-1], fields) or f" Valid keys: {', '.join(fields)}."
        return f"unknown key {where!r}.{hint}"
    if e["type"] == "missing":
        return f"missing required key {where!r}"
    return f"{where}: {e['msg']} (got {e.get('input')!r})"


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _walk(model: type[BaseModel], loc: list[Any]) -> tuple[list[str], int | None, Any]:
    """Follow an error location through the model's annotations.

    Returns the location without union member tags (``tasks.0.CsvTaskSpec.target`` ->
    ``tasks.0.target``), the index of the first union tag, and the model owning the last key.
    """
    path: list[str] = []
    union_at: int | None = None
    ann: Any = model
    owner: Any = model
    for i, part in enumerate(loc):
        if _is_union(ann):  # X | None is validated as X, without a tag
            members = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(members) == 1:
                ann = members[0]
        if _is_model(ann):
            owner = ann
            field = ann.model_fields.get(part) if isinstance(part, str) else None
            path.append(str(part))
            ann = field.annotation if field is not None else Any
        elif _is_union(ann):
            if union_at is None:
                union_at = i
            ann = next(
                (
                    m
                    for m in typing.get_args(ann)
                    if _is_model(m) and getattr(m, "__name__", None) == part
                ),
                Any,
            )
        else:
            path.append(str(part))
            args = typing.get_args(ann)
            ann = args[-1] if typing.get_origin(ann) is not None and args else Any
    return path, union_at, owner


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` naming the option nearest to ``word``, or ``""`` when none is near."""
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""

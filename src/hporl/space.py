"""Search spaces: the hyperparameters a policy or sampler may choose, and how to encode them.

A space is an ordered set of named parameters. Kinds:

- ``categorical``: ``choices`` (strings, numbers or booleans) and a ``default`` (first choice).
- ``float`` / ``int``: ``low`` <= ``high``, optional ``log: true`` (then ``low > 0``), optional
  ``off_value: VALUE`` (a special value such as ``0.0`` meaning "disabled", allowed besides the range),
  a ``default`` inside the range (or equal to ``off``).
- ``fixed``: one ``value``, never chosen, always present in a configuration.

Any parameter may carry ``when: {parent: [values...]}``: it is active only when every named
parent is active and takes one of the listed values. Parents must be categorical or fixed. A
configuration holds exactly the active parameters.

Example::

    space = SearchSpace.from_dict({
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam"], "default": "adam"},
        "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True, "default": 1e-3},
        "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"optimizer": ["sgd"]}},
    })
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hporl._io import did_you_mean, read_yaml
from hporl.exceptions import SearchSpaceError

__all__ = ["Parameter", "SearchSpace", "builtin_spaces", "config_key"]

KINDS = ("categorical", "float", "int", "fixed")
_KEYS = {
    "categorical": {"type", "choices", "default", "when", "description"},
    "float": {"type", "low", "high", "log", "default", "off_value", "when", "description"},
    "int": {"type", "low", "high", "log", "default", "off_value", "when", "description"},
    "fixed": {"type", "value", "when", "description"},
}
Config = dict[str, Any]


_MAX_INT = 2**53  # int bounds stay exact as floats and fit numpy's int64 sampling
_TOP_KEYS = ["name", "description", "include", "parameters"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_choice(value: Any) -> bool:
    """A value a categorical or fixed parameter may take: a string, bool, null or finite number."""
    if isinstance(value, (str, bool)) or value is None:
        return True
    return _is_number(value) and math.isfinite(float(value))


_UNSET = object()
"""What a value function of :meth:`SearchSpace._fill` returns for a parameter left out."""


@dataclass(frozen=True)
class Parameter:
    """One hyperparameter. Build it through :meth:`SearchSpace.from_dict`, which validates it."""

    name: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    off: Any = None
    has_off: bool = False
    default: Any = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    description: str = ""

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, name: str, spec: Any) -> Parameter:
        where = f"parameter {name!r}"
        if not isinstance(name, str) or not name:
            raise SearchSpaceError(f"parameter names must be non-empty strings, got {name!r}")
        if not isinstance(spec, Mapping):
            raise SearchSpaceError(f"{where}: expected a mapping with a 'type', got {spec!r}")
        kind = spec.get("type")
        if kind not in KINDS:
            raise SearchSpaceError(
                f"{where}: unknown kind 'type: {kind}'; expected one of {', '.join(KINDS)}."
                + (did_you_mean(str(kind), list(KINDS)) if kind is not None else "")
            )
        unknown = sorted(map(str, set(spec) - _KEYS[kind]))
        if unknown:
            hint = (
                " (YAML reads a bare off/on/yes/no as a boolean)"
                if unknown[0] in ("False", "True")
                else ""
            )
            raise SearchSpaceError(
                f"{where}: unknown key {unknown[0]!r} for type {kind}{hint}."
                + did_you_mean(unknown[0], sorted(_KEYS[kind]))
            )
        when = cls._parse_when(name, spec.get("when"))
        description = str(spec.get("description", ""))
        if kind == "fixed":
            if "value" not in spec:
                raise SearchSpaceError(f"{where}: a fixed parameter needs 'value'")
            value = spec["value"]
            if not _is_choice(value):
                raise SearchSpaceError(
                    f"{where}: value {value!r} is not a string, finite number, bool or null"
                )
            return cls(
                name, kind, choices=(value,), default=value, when=when, description=description
            )
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, (list, tuple)) or not choices:
                raise SearchSpaceError(
                    f"{where}: 'choices' must be a non-empty list, got {choices!r}"
                )
            for c in choices:
                if not _is_choice(c):
                    raise SearchSpaceError(
                        f"{where}: choice {c!r} is not a string, finite number, bool or null"
                    )
            if len(set(map(repr, choices))) != len(choices):
                raise SearchSpaceError(f"{where}: duplicate value in choices {list(choices)!r}")
            default = spec.get("default", choices[0])
            if not any(_same(default, c) for c in choices):
                raise SearchSpaceError(
                    f"{where}: default {default!r} is not one of the choices {list(choices)!r}"
                )
            default = next(c for c in choices if _same(default, c))
            return cls(
                name,
                kind,
                choices=tuple(choices),
                default=default,
                when=when,
                description=description,
            )
        # float / int. PyYAML reads "1e-5" (no dot) as a string: accept such numbers.
        spec = {
            k: _yaml_number(v) if k in ("low", "high", "default", "off_value") else v
            for k, v in spec.items()
        }
        low, high = spec.get("low"), spec.get("high")
        for key, value in (("low", low), ("high", high)):
            if not _is_number(value) or not math.isfinite(float(value)):
                raise SearchSpaceError(f"{where}: '{key}' must be a finite number, got {value!r}")
            if kind == "int" and float(value) != int(value):
                raise SearchSpaceError(f"{where}: '{key}' must be an integer, got {value!r}")
            if kind == "int" and abs(value) > _MAX_INT:
                raise SearchSpaceError(
                    f"{where}: '{key}' must lie within ±2**53 for an int parameter, got {value!r}"
                )
        low = int(low) if kind == "int" else float(low)
        high = int(high) if kind == "int" else float(high)
        if low > high:
            raise SearchSpaceError(f"{where}: low > high (low={low!r}, high={high!r})")
        if not math.isfinite(float(high) - float(low)):
            raise SearchSpaceError(
                f"{where}: the range [{low!r}, {high!r}] is too wide to sample (its width overflows)"
            )
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise SearchSpaceError(f"{where}: 'log' must be true or false, got {log!r}")
        if log and low <= 0:
            raise SearchSpaceError(
                f"{where}: low > 0 must hold for log=true, but got (low={low!r}, high={high!r})"
            )
        has_off = "off_value" in spec
        off = spec.get("off_value")
        if has_off and not (_is_number(off) or off is None):
            raise SearchSpaceError(f"{where}: 'off_value' must be a number or null, got {off!r}")
        if has_off and off is not None:
            off = int(off) if kind == "int" else float(off)
            if low <= off <= high:
                raise SearchSpaceError(
                    f"{where}: off value {off!r} lies inside the range [{low!r}, {high!r}]"
                )
        if "default" in spec:
            default = spec["default"]
            if has_off and _same(default, off):
                default = off
            else:
                if not _is_number(default):
                    raise SearchSpaceError(f"{where}: default {default!r} is not a number")
                if not low <= default <= high:
                    raise SearchSpaceError(
                        f"{where}: default {default!r} is outside the bounds [{low!r}, {high!r}]"
                    )
                if kind == "int" and float(default) != int(default):
                    raise SearchSpaceError(f"{where}: default {default!r} is not an integer")
                default = int(default) if kind == "int" else float(default)
        else:
            # in log space for log (sqrt(low * high) underflows), low + width / 2 (no overflow)
            mid = math.exp((math.log(low) + math.log(high)) / 2) if log else low + (high - low) / 2
            mid = min(max(mid, low), high)  # exp/log rounding may step outside
            default = round(mid) if kind == "int" else float(mid)
        return cls(
            name,
            kind,
            low=low,
            high=high,
            log=log,
            off=off,
            has_off=has_off,
            default=default,
            when=when,
            description=description,
        )

    @staticmethod
    def _parse_when(name: str, when: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        if when is None:
            return ()
        if not isinstance(when, Mapping) or not when:
            raise SearchSpaceError(
                f"parameter {name!r}: 'when' must map parent names to lists of values, got {when!r}"
            )
        out = []
        for parent, values in when.items():
            if not isinstance(values, (list, tuple)):
                values = [values]
            if not values:
                raise SearchSpaceError(f"parameter {name!r}: 'when: {parent}' lists no value")
            out.append((str(parent), tuple(values)))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind}
        if self.kind == "fixed":
            d["value"] = self.default
        elif self.kind == "categorical":
            d["choices"] = list(self.choices)
            d["default"] = self.default
        else:
            d.update(low=self.low, high=self.high)
            if self.log:
                d["log"] = True
            if self.has_off:
                d["off_value"] = self.off
            d["default"] = self.default
        if self.when:
            d["when"] = {p: list(v) for p, v in self.when}
        if self.description:
            d["description"] = self.description
        return d

    # -- values -------------------------------------------------------------------------------
    @property
    def is_numeric(self) -> bool:
        return self.kind in ("float", "int")

    def contains(self, value: Any) -> bool:
        if self.kind in ("categorical", "fixed"):
            return any(_same(value, c) for c in self.choices)
        if self.has_off and _same(value, self.off):
            return True
        if not _is_number(value) or not math.isfinite(float(value)):
            return False
        if self.kind == "int" and float(value) != int(value):
            return False
        return self.low <= value <= self.high

    def _to_unit(self, value: float) -> float:
        lo, hi = float(self.low), float(self.high)
        if hi == lo:
            return 0.0
        if self.log:
            return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (value - lo) / (hi - lo)

    def _from_unit(self, u: float) -> float | int:
        u = min(max(float(u), 0.0), 1.0)
        lo, hi = float(self.low), float(self.high)
        if u in (0.0, 1.0):  # exact endpoints, free of exp/log rounding
            return self.low if u == 0.0 else self.high
        value = (
            math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            if self.log
            else lo + u * (hi - lo)
        )
        if self.kind == "int":
            return int(min(max(round(value), self.low), self.high))
        return float(min(max(value, lo), hi))

    @property
    def width(self) -> int:
        """Number of columns this parameter takes in :meth:`SearchSpace.encode`."""
        if self.kind == "fixed":
            return 0
        if self.kind == "categorical":
            return len(self.choices)
        return 2 if self.has_off else 1


def _yaml_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps ``True`` apart from ``1`` and treats 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is None and b is None
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class SearchSpace:
    """An ordered, validated set of :class:`Parameter` (parents always before children)."""

    parameters: tuple[Parameter, ...]
    name: str = ""
    _index: dict[str, Parameter] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {p.name: p for p in self.parameters})

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str | None = None) -> SearchSpace:
        """Build a space from ``{"parameters": {...}}`` or directly ``{name: spec, ...}``.

        ``include: [builtin_name_or_path, ...]`` prepends other spaces.

        Raises:
            SearchSpaceError: naming the parameter, key and value at fault.
        """
        if not isinstance(data, Mapping):
            raise SearchSpaceError(f"a search space must be a mapping, got {type(data).__name__}")
        data = dict(data)
        includes: list[SearchSpace] = []
        if "parameters" not in data and "include" not in data:
            # the direct form {name: spec}; a misspelt top-level key would read as a parameter
            odd = [k for k, v in data.items() if not (isinstance(v, Mapping) and "type" in v)]
            typo = [k for k in odd if isinstance(k, str) and did_you_mean(k, _TOP_KEYS)]
            misspelt = [k for k in typo if k not in _TOP_KEYS]
            if misspelt:
                raise _unknown_top_key(misspelt[0])
            if typo:
                raise SearchSpaceError(
                    f"a search space with {typo[0]!r} lists its parameters under 'parameters'"
                )
        if "parameters" in data or "include" in data:
            extra = sorted(map(str, set(data) - set(_TOP_KEYS)))
            if extra:
                raise _unknown_top_key(extra[0])
            name = name or data.get("name")
            if name is not None and not isinstance(name, str):
                raise SearchSpaceError(f"the space's 'name' must be a string, got {name!r}")
            inc = data.get("include")
            if inc is None:
                inc = []
            elif isinstance(inc, str):
                inc = [inc]
            elif not isinstance(inc, (list, tuple)):
                raise SearchSpaceError(
                    f"'include' must be a built-in space name, a path, or a list of them, got {inc!r}"
                )
            for ref in inc:
                includes.append(_resolve_include(ref))
            params = data.get("parameters") or {}
        else:
            params = data
        if isinstance(params, list):
            # A list of {name: ..., type: ...}: duplicates are possible here and are refused.
            seen: dict[str, Any] = {}
            for item in params:
                if not isinstance(item, Mapping) or "name" not in item:
                    raise SearchSpaceError(f"a parameter list entry needs a 'name': {item!r}")
                pname = item["name"]
                if not isinstance(pname, str) or not pname:
                    raise SearchSpaceError(
                        f"parameter names must be non-empty strings, got {pname!r}"
                    )
                if pname in seen:
                    raise SearchSpaceError(f"duplicate parameter name {pname!r}")
                seen[pname] = {k: v for k, v in item.items() if k != "name"}
            params = seen
        if not isinstance(params, Mapping):
            raise SearchSpaceError(f"'parameters' must be a mapping, got {type(params).__name__}")
        parsed = [Parameter.from_dict(k, v) for k, v in params.items()]
        # Checked together: a condition may name a parameter of an included space.
        included = [p for inc_space in includes for p in inc_space.parameters]
        space = cls._checked([*included, *parsed], name=name or "")
        if name:
            object.__setattr__(space, "name", name)
        return space

    @classmethod
    def _checked(cls, params: list[Parameter], *, name: str) -> SearchSpace:
        by_name: dict[str, Parameter] = {}
        for p in params:
            if p.name in by_name:
                raise SearchSpaceError(f"duplicate parameter name {p.name!r}")
            by_name[p.name] = p
        for p in params:
            for parent, values in p.when:
                if parent not in by_name:
                    raise SearchSpaceError(
                        f"parameter {p.name!r}: condition on unknown parameter {parent!r}."
                        + did_you_mean(parent, list(by_name))
                    )
                q = by_name[parent]
                if q.kind not in ("categorical", "fixed"):
                    raise SearchSpaceError(
                        f"parameter {p.name!r}: condition on {parent!r}, which is {q.kind}; "
                        "conditions may only name categorical or fixed parameters"
                    )
                for v in values:
                    if not q.contains(v):
                        raise SearchSpaceError(
                            f"parameter {p.name!r}: condition on {parent!r} names the unknown "
                            f"value {v!r}; {parent!r} takes {list(q.choices)!r}"
                        )
        # Topological order, stable with respect to the declaration order; cycles refused.
        order: list[Parameter] = []
        state: dict[str, int] = {}

        def visit(p: Parameter, path: list[str]) -> None:
            if state.get(p.name) == 2:
                return
            if state.get(p.name) == 1:
                cycle = [*path[path.index(p.name) :], p.name]
                raise SearchSpaceError(f"cycle in conditions: {' -> '.join(cycle)}")
            state[p.name] = 1
            for parent, _ in p.when:
                visit(by_name[parent], [*path, p.name])
            state[p.name] = 2
            order.append(p)

        for p in params:
            visit(p, [])
        return cls(tuple(order), name=name)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read a space from a YAML file (``yaml.safe_load``: no Python tags)."""
        path = Path(path)
        data = read_yaml(path, what="search space", error=SearchSpaceError)
        if data is None:
            raise SearchSpaceError(f"{path}: the file is empty")
        try:
            return cls.from_dict(
                data, name=None if isinstance(data, Mapping) and "name" in data else path.stem
            )
        except SearchSpaceError as err:
            raise SearchSpaceError(f"{path}: {err}") from None

    @classmethod
    def builtin(cls, name: str) -> SearchSpace:
        """One of the spaces shipped with hporl (see :func:`builtin_spaces`)."""
        names = builtin_spaces()
        if name not in names:
            raise SearchSpaceError(
                f"unknown built-in search space {name!r}; available: {', '.join(names)}."
                + did_you_mean(name, names)
            )
        text = (resources.files("hporl") / "spaces" / f"{name}.yaml").read_text()
        return cls.from_dict(yaml.safe_load(text), name=name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out["parameters"] = {p.name: p.to_dict() for p in self.parameters}
        return out

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def fixing(self, names: Iterable[str], why: str = "") -> SearchSpace:
        """This space with the named parameters fixed at their defaults (names it lacks are
        ignored): e.g. the classification-only knobs of a regression task."""
        names = set(names)
        data = self.to_dict()
        for name, spec in data["parameters"].items():
            if name in names and spec["type"] != "fixed":
                fixed = {"type": "fixed", "value": spec["default"]}
                if "when" in spec:
                    fixed["when"] = spec["when"]
                if why:
                    fixed["description"] = why
                data["parameters"][name] = fixed
        return SearchSpace.from_dict(data)

    def conform(self, config: Mapping[str, Any]) -> Config:
        """``config`` with this space's fixed parameters at their values (one proposed for a
        space that still varied them), validated."""
        out = dict(config)
        for p in self.parameters:
            if p.kind == "fixed" and p.name in out:
                out[p.name] = p.default
        return self.validate(out)

    def __add__(self, other: SearchSpace) -> SearchSpace:
        """Compose two spaces; a name present in both is an error."""
        if not isinstance(other, SearchSpace):
            return NotImplemented
        name = "+".join(n for n in (self.name, other.name) if n)
        return SearchSpace._checked([*self.parameters, *other.parameters], name=name)

    # -- access -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Parameter:
        try:
            return self._index[name]
        except KeyError:
            raise SearchSpaceError(
                f"unknown parameter {name!r}." + did_you_mean(name, list(self._index))
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[Parameter]:
        return iter(self.parameters)

    def __len__(self) -> int:
        return len(self.parameters)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def chosen(self) -> list[Parameter]:
        """Parameters that are chosen (all but the fixed ones), in order."""
        return [p for p in self.parameters if p.kind != "fixed"]

    def is_active(self, name: str, partial_config: Mapping[str, Any]) -> bool:
        """Whether ``name`` is active given the values of its parents in ``partial_config``.

        A parent missing from ``partial_config`` (not chosen yet, or inactive) makes it inactive.
        """
        p = self[name]
        for parent, values in p.when:
            if parent not in partial_config:
                return False
            if not self.is_active(parent, partial_config):
                return False
            if not any(_same(partial_config[parent], v) for v in values):
                return False
        return True

    # -- configurations ---------------------------------------------------------------------
    def default(self) -> Config:
        return self._fill(lambda p: p.default)

    def sample(self, rng: np.random.Generator | int | None = None) -> Config:
        """A configuration drawn uniformly (log-uniformly where ``log``; "off" with p=0.5)."""
        rng = np.random.default_rng(rng)

        def draw(p: Parameter) -> Any:
            if p.kind == "fixed":
                return p.default
            if p.kind == "categorical":
                return p.choices[int(rng.integers(len(p.choices)))]
            if p.has_off and rng.random() < 0.5:
                return p.off
            if p.kind == "int":
                if p.log:
                    lo, hi = math.log(p.low - 0.5), math.log(p.high + 0.5)
                    return int(min(max(round(math.exp(rng.uniform(lo, hi))), p.low), p.high))
                return int(rng.integers(p.low, p.high + 1))
            return p._from_unit(rng.random())

        return self._fill(draw)

    def _fill(self, value_of: Any) -> Config:
        config: Config = {}
        for p in self.parameters:
            if self.is_active(p.name, config):
                config[p.name] = value_of(p)
        return config

    def validate(self, config: Mapping[str, Any]) -> Config:
        """Check that ``config`` holds exactly the active parameters with values in range.

        Returns a copy with numbers converted to the parameter's type.

        Raises:
            SearchSpaceError: naming the key and the value at fault.
        """
        if not isinstance(config, Mapping):
            raise SearchSpaceError(
                f"a configuration must be a mapping, got {type(config).__name__}"
            )
        for key in config:
            if key not in self._index:
                raise SearchSpaceError(
                    f"unknown parameter {key!r} in configuration."
                    + did_you_mean(str(key), self.names)
                )
        out: Config = {}
        for p in self.parameters:
            active = self.is_active(p.name, out)
            if not active:
                if p.name in config:
                    conds = ", ".join(f"{k} in {list(v)}" for k, v in p.when)
                    raise SearchSpaceError(
                        f"parameter {p.name!r} = {config[p.name]!r} is inactive here "
                        f"(it is used only when {conds})"
                    )
                continue
            if p.name not in config:
                if p.kind == "fixed":
                    out[p.name] = p.default
                    continue
                raise SearchSpaceError(f"configuration is missing the active parameter {p.name!r}")
            value = config[p.name]
            if not p.contains(value):
                raise SearchSpaceError(
                    f"parameter {p.name!r}: value {value!r} is outside {_domain(p)}"
                )
            if p.kind in ("categorical", "fixed"):
                value = next(c for c in p.choices if _same(value, c))
            elif p.has_off and _same(value, p.off):
                value = p.off
            else:
                value = int(value) if p.kind == "int" else float(value)
            out[p.name] = value
        return out

    # -- vectors and bins -------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Length of :meth:`encode`'s vector."""
        return sum(p.width for p in self.parameters)

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """Encode a (possibly partial) configuration as a float vector in [0, 1].

        Each categorical parameter takes a one-hot block; a numeric one a single column with its
        position in the range (log-scaled where ``log``), preceded by an "is off" column when it
        has an ``off`` value. Parameters absent from ``config`` (inactive or not yet chosen) are
        all zeros. Fixed parameters take no column.
        """
        out = np.zeros(self.dim, dtype=np.float64)
        i = 0
        for p in self.parameters:
            if p.name in config and p.width:
                value = config[p.name]
                if p.kind == "categorical":
                    idx = next((j for j, c in enumerate(p.choices) if _same(value, c)), None)
                    if idx is None:
                        raise SearchSpaceError(
                            f"parameter {p.name!r}: value {value!r} is outside {_domain(p)}"
                        )
                    out[i + idx] = 1.0
                elif p.has_off and _same(value, p.off):
                    out[i] = 1.0
                else:
                    if not p.contains(value):
                        raise SearchSpaceError(
                            f"parameter {p.name!r}: value {value!r} is outside {_domain(p)}"
                        )
                    out[i + p.width - 1] = min(max(p._to_unit(float(value)), 0.0), 1.0)
            i += p.width
        return out

    def decode(self, vector: np.ndarray) -> Config:
        """Inverse of :meth:`encode` for a complete configuration (active parameters only)."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (self.dim,):
            raise SearchSpaceError(f"expected a vector of shape ({self.dim},), got {vector.shape}")
        offsets: dict[str, int] = {}
        i = 0
        for p in self.parameters:
            offsets[p.name] = i
            i += p.width

        def value_of(p: Parameter) -> Any:
            j = offsets[p.name]
            if p.kind == "fixed":
                return p.default
            if p.kind == "categorical":
                return p.choices[int(np.argmax(vector[j : j + p.width]))]
            if p.has_off and vector[j] >= 0.5:
                return p.off
            return p._from_unit(vector[j + p.width - 1])

        return self._fill(value_of)

    def bins(self, name: str, n: int) -> list[Any]:
        """Values a discrete action can take for ``name``.

        Categorical and fixed parameters give their choices (``n`` is ignored). Numeric ones give
        ``n`` values evenly spaced over the range (in log space where ``log``); with an ``off``
        value, the first bin is ``off`` and the other ``n - 1`` cover the range. Int parameters
        give distinct values, so possibly fewer than ``n``.
        """
        p = self[name]
        if p.kind in ("categorical", "fixed"):
            return list(p.choices)
        if not isinstance(n, int) or n < (3 if p.has_off else 2):
            raise SearchSpaceError(
                f"bins({name!r}, n={n!r}): n must be an integer >= {3 if p.has_off else 2}"
            )
        m = n - 1 if p.has_off else n
        # 10 significant digits: bins read 1.0, not 1.0000000000000004, after exp/log.
        values = [p._from_unit(k / (m - 1)) for k in range(m)]
        if p.kind == "float":
            values = [min(max(float(f"{v:.10g}"), p.low), p.high) for v in values]
        if p.kind == "int":
            values = list(dict.fromkeys(values))
        return [p.off, *values] if p.has_off else values

    # -- optuna -----------------------------------------------------------------------------
    def to_optuna(self) -> dict[str, Any]:
        """Optuna distributions for every chosen parameter.

        A numeric parameter with an ``off`` value adds a boolean ``"<name>:off"`` categorical.
        Conditional parameters are included; use :meth:`suggest` for define-by-run sampling that
        asks only the active ones, and :meth:`from_optuna_params` to turn a trial's params back
        into a configuration.
        """
        import optuna.distributions as od

        out: dict[str, Any] = {}
        for p in self.chosen:
            if p.kind == "categorical":
                out[p.name] = od.CategoricalDistribution(list(p.choices))
                continue
            if p.has_off:
                out[f"{p.name}:off"] = od.CategoricalDistribution([False, True])
            if p.kind == "int":
                out[p.name] = od.IntDistribution(int(p.low), int(p.high), log=p.log)
            else:
                out[p.name] = od.FloatDistribution(float(p.low), float(p.high), log=p.log)
        return out

    def _fill(self, value_of: Callable[[Parameter], Any]) -> Config:
        """A configuration of the active parameters, in order: fixed ones at their value, the
        others ``value_of(parameter)`` (``_UNSET``: left out)."""
        config: Config = {}
        for p in self.parameters:
            if not self.is_active(p.name, config):
                continue
            value = p.default if p.kind == "fixed" else value_of(p)
            if value is not _UNSET:
                config[p.name] = value
        return self.validate(config)

    def suggest(self, trial: Any) -> Config:
        """Sample a configuration with an optuna trial, asking only the active parameters."""

        def ask(p: Parameter) -> Any:
            if p.kind == "categorical":
                return trial.suggest_categorical(p.name, list(p.choices))
            if p.has_off and trial.suggest_categorical(f"{p.name}:off", [False, True]):
                return p.off
            if p.kind == "int":
                return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
            return trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)

        return self._fill(ask)

    def optuna_params(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A configuration as optuna params (for ``study.enqueue_trial`` or ``add_trial``)."""
        config = self.validate(config)
        params: dict[str, Any] = {}
        for p in self.chosen:
            if p.name not in config:
                continue
            if p.has_off:
                is_off = _same(config[p.name], p.off)
                params[f"{p.name}:off"] = is_off
                if is_off:
                    continue
            params[p.name] = config[p.name]
        return params

    def from_optuna_params(self, params: Mapping[str, Any]) -> Config:
        """Inverse of :meth:`optuna_params`."""

        def read(p: Parameter) -> Any:
            if p.has_off and params.get(f"{p.name}:off"):
                return p.off
            return params.get(p.name, _UNSET)

        return self._fill(read)


def _domain(p: Parameter) -> str:
    if p.kind in ("categorical", "fixed"):
        return f"the choices {list(p.choices)!r}"
    rng = f"[{p.low!r}, {p.high!r}]"
    return f"{rng} or off={p.off!r}" if p.has_off else rng


def _unknown_top_key(key: str) -> SearchSpaceError:
    return SearchSpaceError(
        f"unknown top-level key {key!r} in search space; expected 'name', "
        "'description', 'include' or 'parameters'." + did_you_mean(key, _TOP_KEYS)
    )


def _resolve_include(ref: Any) -> SearchSpace:
    if not isinstance(ref, str):
        raise SearchSpaceError(f"'include' entries must be built-in names or paths, got {ref!r}")
    if ref in builtin_spaces():
        return SearchSpace.builtin(ref)
    if Path(ref).is_file():
        return SearchSpace.from_yaml(ref)
    raise SearchSpaceError(
        f"include {ref!r} is neither a built-in space ({', '.join(builtin_spaces())}) nor a file"
    )


def builtin_spaces() -> list[str]:
    """Names of the search spaces shipped with hporl."""
    folder = resources.files("hporl") / "spaces"
    return sorted(f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml"))


def config_key(config: Mapping[str, Any]) -> str:
    """A canonical string for a configuration (for caches and "tried already" sets)."""
    return json.dumps(dict(config), sort_keys=True, default=str)

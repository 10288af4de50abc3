"""Hypothesis-generated spaces and configurations: a valid space or SearchSpaceError, never
another exception; a space that builds works (default, sample, encode/decode, optuna)."""

from __future__ import annotations

import math

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hporl import SearchSpace, SearchSpaceError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ["a", "b", "c", "lr", "opt"]
KEYS = [
    "type",
    "choices",
    "default",
    "low",
    "high",
    "log",
    "off_value",
    "value",
    "when",
    "description",
]
JUNK_KEYS = ["hihg", "lwo", "typ", "True", "", "parameters", "name"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-10, 10),
    st.sampled_from(["", "x", "sgd", "adam", "1e-3", "off", "nan", "float", "int"]),
    st.text(max_size=5),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)
    ),
    max_leaves=8,
)
kinds = st.sampled_from(["categorical", "float", "int", "fixed", "flot", None, 3])


def _value_for(key: str) -> st.SearchStrategy:
    if key == "type":
        return kinds
    if key == "choices":
        return st.one_of(st.lists(scalars, max_size=4), values)
    if key in ("low", "high", "default", "off_value", "value"):
        return st.one_of(scalars, values)
    if key == "log":
        return st.one_of(st.booleans(), scalars)
    if key == "when":
        return st.one_of(
            st.dictionaries(
                st.sampled_from(NAMES), st.one_of(st.lists(scalars, max_size=3), scalars)
            ),
            values,
        )
    return values


@st.composite
def good_specs(draw: st.DrawFn) -> dict[str, object]:
    """A spec of the real schema, valid more often than not (conditions may name any parent)."""
    kind = draw(st.sampled_from(["categorical", "float", "int", "fixed"]))
    spec: dict[str, object] = {"type": kind}
    if kind == "categorical":
        choices = draw(
            st.lists(
                st.sampled_from(["x", "y", "z", 1, 2.5, True, None]),
                min_size=1,
                max_size=4,
                unique_by=repr,
            )
        )
        spec["choices"] = choices
        if draw(st.booleans()):
            spec["default"] = draw(st.sampled_from(choices))
    elif kind == "fixed":
        spec["value"] = draw(st.sampled_from(["x", "mlp", 3, 0.5, True, None]))
    else:
        log = draw(st.booleans())
        if kind == "int":
            low = draw(st.integers(1 if log else -(2**52), 1000))
            high = low + draw(st.one_of(st.integers(0, 10_000), st.integers(0, 2**52)))
        else:
            low = draw(st.floats(1e-300, 10) if log else st.floats(-1e300, 1e300))
            high = low + draw(st.one_of(st.floats(0, 1e6), st.floats(0, 1e300)))
        spec.update(low=low, high=high, log=log)
        if draw(st.booleans()):
            spec["off_value"] = draw(st.sampled_from([0, 0.0, -1, None, 1e9]))
        if draw(st.booleans()):
            spec["default"] = draw(st.one_of(st.just(low), st.just(high), st.floats(low, high)))
    if draw(st.integers(0, 2)) == 0:
        spec["when"] = {
            draw(st.sampled_from(NAMES)): draw(
                st.lists(st.sampled_from(["x", "y", "z", 1, True, "mlp"]), min_size=1, max_size=2)
            )
        }
    return spec


@st.composite
def param_specs(draw: st.DrawFn) -> object:
    """A parameter spec: a good one, a good one with damage (junk keys, wrong types), or junk."""
    roll = draw(st.integers(0, 9))
    if roll == 0:
        return draw(values)
    if roll <= 5:
        return draw(good_specs())
    spec: dict[object, object] = dict(draw(good_specs()))
    if draw(st.booleans()):
        spec["type"] = draw(kinds)
    for key in draw(st.lists(st.sampled_from(KEYS + JUNK_KEYS), min_size=1, max_size=3)):
        spec[key] = draw(_value_for(key))
    return spec


@st.composite
def good_spaces(draw: st.DrawFn) -> dict[str, object]:
    """A valid space of 1-5 parameters; conditions name earlier categorical or fixed ones."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    params: dict[str, object] = {}
    for name in names:
        spec = {k: v for k, v in draw(good_specs()).items() if k != "when"}
        off = spec.get("off_value")
        if off is not None and spec["low"] <= off <= spec["high"]:
            del spec["off_value"]
        if spec["type"] == "int" and "default" in spec:
            spec["default"] = round(spec["default"])
        parents = [
            (n, p["choices"] if "choices" in p else [p["value"]])
            for n, p in params.items()
            if p["type"] in ("categorical", "fixed")
        ]
        if parents and draw(st.booleans()):
            parent, choices = draw(st.sampled_from(parents))
            spec["when"] = {parent: draw(st.lists(st.sampled_from(choices), min_size=1))}
        params[name] = spec
    return params


@st.composite
def damaged_spaces(draw: st.DrawFn) -> dict[str, object]:
    """A valid space with one parameter replaced or one key given a random value."""
    params = draw(good_spaces())
    name = draw(st.sampled_from(sorted(params)))
    if draw(st.booleans()):
        params[name] = draw(param_specs())
    else:
        key = draw(st.sampled_from(KEYS + JUNK_KEYS))
        params[name] = {**params[name], key: draw(_value_for(key))}
    return params


spaces = st.one_of(
    good_spaces(),
    damaged_spaces(),
    good_spaces().map(lambda p: {"parameters": p}),
    good_spaces().map(lambda p: {"parameters": [{"name": k, **v} for k, v in p.items()]}),
    st.dictionaries(st.sampled_from(NAMES), param_specs(), max_size=5),
    st.fixed_dictionaries(
        {},
        optional={
            "parameters": st.one_of(
                st.dictionaries(st.sampled_from(NAMES), param_specs(), max_size=5),
                st.lists(
                    st.one_of(
                        param_specs(),
                        st.builds(
                            lambda n, s: {**s, "name": n} if isinstance(s, dict) else s,
                            st.sampled_from(NAMES),
                            param_specs(),
                        ),
                    ),
                    max_size=4,
                ),
                values,
            ),
            "include": st.one_of(
                st.sampled_from(["optimizer", "lcbench", "nope", ""]),
                st.lists(st.sampled_from(["optimizer", "lcbench", "nope"]), max_size=2),
                values,
            ),
            "name": st.one_of(st.text(max_size=4), values),
            "description": values,
            "paramters": values,
        },
    ),
    values,
)


def _exercise(space: SearchSpace, seed: int) -> None:
    """Everything a valid space promises."""
    default = space.default()
    assert space.validate(default) == default
    rng = np.random.default_rng(seed)
    for _ in range(3):
        config = space.sample(rng)
        assert space.validate(config) == config
        vec = space.encode(config)
        assert vec.shape == (space.dim,) and np.all((vec >= 0) & (vec <= 1))
        back = space.decode(vec)
        assert back.keys() == config.keys()
        for key, value in config.items():
            if isinstance(value, float) and not isinstance(back[key], bool):
                assert math.isclose(back[key], value, rel_tol=1e-6, abs_tol=1e-9), key
            else:
                assert back[key] == value, key
        assert space.from_optuna_params(space.optuna_params(config)) == config
    space.to_optuna()
    assert SearchSpace.from_dict(space.to_dict()) == space
    for p in space.chosen:
        space.bins(p.name, 5)


@given(data=spaces, seed=st.integers(0, 2**32 - 1))
@SETTINGS
def test_random_space_dicts_build_or_raise_search_space_error(data, seed):
    try:
        space = SearchSpace.from_dict(data)
    except SearchSpaceError:
        return
    _exercise(space, seed)


@given(data=spaces, seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_space_yaml_files_build_or_raise_search_space_error(tmp_path_factory, data, seed):
    path = tmp_path_factory.mktemp("fuzz") / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    try:
        space = SearchSpace.from_yaml(path)
    except SearchSpaceError:
        return
    _exercise(space, seed)


yaml_texts = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(
            [
                "parameters:\n",
                "  lr: {type: float, low: 0.1, high: 1}\n",
                "  x: !!python/object/apply:os.system ['echo hi']\n",
                "  y: {type: categorical, choices: [a, b]}\n",
                "  y: {type: int, low: 1, high: 3}\n",
                "  z: {type: float, low: 0, high: 1, when: {y: [a]}}\n",
                "include: optimizer\n",
                "name: x\n",
                "- a\n",
                "  [1, 2\n",
                "&a [*a]\n",
                "!custom 1\n",
                "key: value\n",
                "\t\n",
                "{\n",
            ]
        ),
        max_size=6,
    ).map("".join),
)


@given(text=yaml_texts, seed=st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_yaml_text_builds_or_raises_search_space_error(tmp_path_factory, text, seed):
    path = tmp_path_factory.mktemp("fuzz") / "space.yaml"
    path.write_text(text)
    try:
        space = SearchSpace.from_yaml(path)
    except SearchSpaceError:
        return
    _exercise(space, seed)


CONDITIONAL = SearchSpace.from_dict(
    {
        "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"opt": ["sgd"]}},
        "wd": {"type": "float", "low": 1e-6, "high": 0.1, "log": True, "off_value": 0.0},
        "bs": {"type": "int", "low": 16, "high": 512, "log": True},
        "flag": {"type": "categorical", "choices": [True, False, 1, None]},
        "net": {"type": "fixed", "value": "mlp"},
    }
)

configs = st.one_of(
    st.dictionaries(st.sampled_from([*CONDITIONAL.names, "lrr", "x"]), values, max_size=8),
    st.builds(
        lambda seed, key, value: {**CONDITIONAL.sample(seed), key: value},
        st.integers(0, 2**32 - 1),
        st.sampled_from(CONDITIONAL.names),
        values,
    ),
    values,
)


@given(config=configs)
@SETTINGS
def test_random_configs_validate_or_raise_search_space_error(config):
    try:
        valid = CONDITIONAL.validate(config)
    except SearchSpaceError:
        return
    assert CONDITIONAL.validate(valid) == valid
    CONDITIONAL.encode(valid)
    assert CONDITIONAL.from_optuna_params(CONDITIONAL.optuna_params(valid)) == valid

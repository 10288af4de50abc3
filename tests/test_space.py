from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hporl import SearchSpace, SearchSpaceError
from hporl.space import builtin_spaces

BASE = {
    "opt": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"], "default": "adam"},
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True, "default": 1e-3},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"opt": ["sgd", "rmsprop"]}},
    "wd": {
        "type": "float",
        "low": 1e-6,
        "high": 1e-1,
        "log": True,
        "off_value": 0.0,
        "default": 0.0,
    },
    "bs": {"type": "int", "low": 16, "high": 512, "log": True, "default": 64},
    "sched": {"type": "categorical", "choices": ["constant", "cosine"]},
    "warmup": {"type": "float", "low": 0.0, "high": 0.3, "when": {"sched": ["cosine"]}},
    "net": {"type": "fixed", "value": "mlp"},
}


def make(**overrides):
    spec = {k: dict(v) for k, v in BASE.items()}
    spec.update(overrides)
    return SearchSpace.from_dict(spec)


# -- construction and round trips -----------------------------------------------------------------
@pytest.mark.parametrize("name", builtin_spaces())
def test_builtin_spaces_load_and_round_trip(name):
    space = SearchSpace.builtin(name)
    assert SearchSpace.from_dict(space.to_dict()) == space
    space.validate(space.default())


def test_builtin_optimizer_space_has_the_general_hyperparameters():
    space = SearchSpace.builtin("optimizer")
    assert set(space["optimizer"].choices) == {
        "sgd",
        "sgd_nesterov",
        "adam",
        "adamw",
        "rmsprop",
        "adagrad",
        "nadam",
        "radam",
    }
    assert set(space["lr_schedule"].choices) == {
        "constant",
        "step",
        "exponential",
        "cosine",
        "warmup_cosine",
        "onecycle",
    }
    for name in (
        "lr",
        "momentum",
        "beta1",
        "beta2",
        "weight_decay",
        "batch_size",
        "grad_clip_norm",
        "label_smoothing",
        "weight_averaging",
        "ema_decay",
        "warmup_fraction",
        "step_gamma",
    ):
        assert name in space
    assert space["lr"].log and space["batch_size"].kind == "int" and space["batch_size"].log
    assert space["weight_decay"].has_off and space["grad_clip_norm"].has_off


def test_lcbench_space_matches_lcbench_ranges():
    space = SearchSpace.builtin("lcbench")
    assert [p.name for p in space.chosen] == [
        "batch_size",
        "learning_rate",
        "momentum",
        "weight_decay",
        "num_layers",
        "max_units",
        "max_dropout",
    ]
    assert (space["batch_size"].low, space["batch_size"].high, space["batch_size"].log) == (
        16,
        512,
        True,
    )
    assert (space["max_units"].low, space["max_units"].high) == (64, 1024)
    assert space["learning_rate"].low == pytest.approx(1e-4) and space[
        "learning_rate"
    ].high == pytest.approx(0.1)


def test_unknown_builtin_suggests_nearest():
    with pytest.raises(
        SearchSpaceError, match=re.escape("unknown built-in search space 'optimiser'")
    ) as e:
        SearchSpace.builtin("optimiser")
    assert "Did you mean 'optimizer'?" in str(e.value)


param_spec = st.one_of(
    st.builds(
        lambda choices: {"type": "categorical", "choices": choices},
        st.lists(
            st.sampled_from(["a", "b", "c", "d", 1, 2.5, True]),
            min_size=1,
            max_size=4,
            unique_by=repr,
        ),
    ),
    st.builds(
        lambda lo, span, log: {"type": "float", "low": lo, "high": lo + span, "log": log},
        st.floats(1e-3, 10),
        st.floats(0, 100),
        st.booleans(),
    ),
    st.builds(
        lambda lo, span, log, off: {
            "type": "int",
            "low": lo,
            "high": lo + span,
            "log": log,
            **({"off_value": 0} if off else {}),
        },
        st.integers(1, 100),
        st.integers(0, 1000),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(lambda v: {"type": "fixed", "value": v}, st.sampled_from(["x", 3, 0.5])),
)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z]{1,6}", fullmatch=True), param_spec, min_size=1, max_size=6
    )
)
@settings(max_examples=60, deadline=None)
def test_round_trip_from_dict_to_dict(spec):
    space = SearchSpace.from_dict(spec)
    again = SearchSpace.from_dict(space.to_dict())
    assert again == space
    assert again.to_dict() == space.to_dict()


@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from([*builtin_spaces(), "test"]))
@settings(max_examples=80, deadline=None)
def test_encode_decode_round_trip(seed, name):
    space = make() if name == "test" else SearchSpace.builtin(name)
    config = space.sample(np.random.default_rng(seed))
    assert space.validate(config) == config
    vec = space.encode(config)
    assert vec.shape == (space.dim,)
    assert np.all((vec >= 0) & (vec <= 1))
    back = space.decode(vec)
    assert back.keys() == config.keys()
    for key, value in config.items():
        if isinstance(value, float):
            assert math.isclose(back[key], value, rel_tol=1e-9, abs_tol=1e-12), key
        else:
            assert back[key] == value, key


# -- bad spaces: every case with its message ------------------------------------------------------
BAD = [
    ({"x": {"type": "gaussian"}}, "parameter 'x': unknown kind 'type: gaussian'"),
    (
        {"x": {"type": "float", "low": 2.0, "high": 1.0}},
        "parameter 'x': low > high (low=2.0, high=1.0)",
    ),
    (
        {"x": {"type": "float", "low": 0.0, "high": 1.0, "log": True}},
        "parameter 'x': low > 0 must hold for log=true, but got (low=0.0, high=1.0)",
    ),
    (
        {"x": {"type": "int", "low": 1, "high": 5, "default": 9}},
        "parameter 'x': default 9 is outside the bounds [1, 5]",
    ),
    (
        {"x": {"type": "categorical", "choices": ["a", "b"], "default": "c"}},
        "parameter 'x': default 'c' is not one of the choices ['a', 'b']",
    ),
    (
        {"x": {"type": "float", "low": 0.0, "high": 1.0, "when": {"opt": ["sgd"]}}},
        "parameter 'x': condition on unknown parameter 'opt'",
    ),
    (
        {
            "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
            "x": {"type": "float", "low": 0.0, "high": 1.0, "when": {"opt": ["lamb"]}},
        },
        "parameter 'x': condition on 'opt' names the unknown value 'lamb'; 'opt' takes ['sgd', 'adam']",
    ),
    (
        {
            "a": {"type": "categorical", "choices": [1, 2], "when": {"b": [1]}},
            "b": {"type": "categorical", "choices": [1, 2], "when": {"a": [1]}},
        },
        "cycle in conditions: a -> b -> a",
    ),
    (
        {
            "parameters": [
                {"name": "x", "type": "fixed", "value": 1},
                {"name": "x", "type": "fixed", "value": 2},
            ]
        },
        "duplicate parameter name 'x'",
    ),
    (
        {"x": {"type": "float", "low": 0.0, "hihg": 1.0}},
        "parameter 'x': unknown key 'hihg' for type float. Did you mean 'high'?",
    ),
    (
        {"x": {"type": "float", "low": "a", "high": 1.0}},
        "parameter 'x': 'low' must be a finite number, got 'a'",
    ),
    (
        {"x": {"type": "float", "low": 0.0, "high": 1.0, "off_value": 0.5}},
        "parameter 'x': off value 0.5 lies inside the range [0.0, 1.0]",
    ),
]


@pytest.mark.parametrize(("spec", "message"), BAD, ids=[m.split(":")[0][:40] for _, m in BAD])
def test_bad_space_raises_with_exact_message(spec, message):
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        SearchSpace.from_dict(spec)


def test_duplicate_name_on_composition():
    space = make()
    with pytest.raises(SearchSpaceError, match=re.escape("duplicate parameter name 'lr'")):
        space + SearchSpace.from_dict({"lr": {"type": "float", "low": 0.1, "high": 1.0}})


def test_composition_and_include(tmp_path):
    extra = SearchSpace.from_dict({"aug": {"type": "categorical", "choices": ["none", "flip"]}})
    combined = SearchSpace.builtin("optimizer") + extra
    assert combined.names[-1] == "aug" and "lr" in combined
    path = tmp_path / "space.yaml"
    path.write_text(
        "include: [optimizer]\nparameters:\n  aug: {type: categorical, choices: [none, flip]}\n"
    )
    assert SearchSpace.from_yaml(path).names == combined.names


# -- YAML -----------------------------------------------------------------------------------------
def test_from_yaml_reads_numbers_without_dots(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("lr: {type: float, low: 1e-5, high: 1e-1, log: true}\n")
    space = SearchSpace.from_yaml(path)
    assert space["lr"].low == 1e-5 and space.name == "s"


def test_from_yaml_refuses_python_tags(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("x: !!python/object/apply:os.system ['echo hacked']\n")
    message = (
        f"{path}: YAML tag '!!python/object/apply:os.system' at line 1, column 4 is not allowed"
    )
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        SearchSpace.from_yaml(path)


def test_from_yaml_bad_syntax_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("x:\n  type: float\n   low: [1\n")
    with pytest.raises(SearchSpaceError, match=r"bad\.yaml: invalid YAML at line \d+"):
        SearchSpace.from_yaml(path)


def test_from_yaml_error_names_file_and_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("x: {type: int, low: 1, high: 5, default: 7}\n")
    with pytest.raises(
        SearchSpaceError, match=re.escape(f"{path}: parameter 'x': default 7 is outside")
    ):
        SearchSpace.from_yaml(path)


def test_bare_off_key_in_yaml_gets_a_hint(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("x: {type: float, low: 0.1, high: 1.0, off: 0.0}\n")
    with pytest.raises(SearchSpaceError, match="YAML reads a bare off/on/yes/no as a boolean"):
        SearchSpace.from_yaml(path)


# -- conditions, validation, defaults -------------------------------------------------------------
def test_conditional_parameters_active_and_inactive():
    space = make()
    assert space.is_active("momentum", {"opt": "sgd"})
    assert space.is_active("momentum", {"opt": "rmsprop"})
    assert not space.is_active("momentum", {"opt": "adam"})
    assert not space.is_active("momentum", {})  # parent not chosen yet
    assert space.is_active("lr", {})
    default = space.default()
    assert "momentum" not in default and "warmup" not in default
    assert default == {
        "opt": "adam",
        "lr": 1e-3,
        "wd": 0.0,
        "bs": 64,
        "sched": "constant",
        "net": "mlp",
    }
    configs = [space.sample(np.random.default_rng(s)) for s in range(50)]
    assert all(("momentum" in c) == (c["opt"] in ("sgd", "rmsprop")) for c in configs)
    assert {c["opt"] for c in configs} == {"sgd", "adam", "rmsprop"}
    assert any(c["wd"] == 0.0 for c in configs) and any(c["wd"] > 0 for c in configs)


def test_nested_conditions_follow_the_chain():
    space = SearchSpace.from_dict(
        {
            "c": {"type": "float", "low": 0.0, "high": 1.0, "when": {"b": ["y"]}},
            "b": {"type": "categorical", "choices": ["x", "y"], "when": {"a": [True]}},
            "a": {"type": "categorical", "choices": [False, True]},
        }
    )
    assert space.names == ["a", "b", "c"]  # parents first
    assert not space.is_active("c", {"a": False, "b": "y"})
    assert space.is_active("c", {"a": True, "b": "y"})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"opt": "adam", "lr": 1e-3, "wd": 0.0, "bs": 64, "sched": "constant", "momentum": 0.9},
            "parameter 'momentum' = 0.9 is inactive here (it is used only when opt in ['sgd', 'rmsprop'])",
        ),
        (
            {"opt": "adam", "lr": 5.0, "wd": 0.0, "bs": 64, "sched": "constant"},
            "parameter 'lr': value 5.0 is outside [0.0001, 1.0]",
        ),
        (
            {"opt": "adam", "lr": 1e-3, "wd": 0.0, "bs": 64.5, "sched": "constant"},
            "parameter 'bs': value 64.5 is outside [16, 512]",
        ),
        (
            {"opt": "sgd", "lr": 1e-3, "wd": 0.0, "bs": 64, "sched": "constant"},
            "configuration is missing the active parameter 'momentum'",
        ),
        (
            {"opt": "adam", "lr": 1e-3, "wd": 0.0, "bs": 64, "sched": "constant", "lrr": 1},
            "unknown parameter 'lrr' in configuration. Did you mean 'lr'?",
        ),
        (
            {"opt": "lamb", "lr": 1e-3, "wd": 0.0, "bs": 64, "sched": "constant"},
            "parameter 'opt': value 'lamb' is outside the choices ['sgd', 'adam', 'rmsprop']",
        ),
    ],
)
def test_validate_names_key_and_value(config, message):
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        make().validate(config)


def test_bins():
    space = make()
    assert space.bins("opt", 5) == ["sgd", "adam", "rmsprop"]
    lr = space.bins("lr", 5)
    assert lr == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert space.bins("wd", 3) == [0.0, 1e-6, 1e-1]
    bs = space.bins("bs", 6)
    assert bs == [16, 32, 64, 128, 256, 512]
    assert all(space["bs"].contains(v) for v in space.bins("bs", 50))
    assert space.bins("net", 4) == ["mlp"]
    with pytest.raises(
        SearchSpaceError, match=re.escape("bins('lr', n=1): n must be an integer >= 2")
    ):
        space.bins("lr", 1)


# -- optuna ---------------------------------------------------------------------------------------
def test_to_optuna_and_suggest_with_a_real_study():
    space = make()
    dists = space.to_optuna()
    assert isinstance(dists["lr"], optuna.distributions.FloatDistribution) and dists["lr"].log
    assert isinstance(dists["bs"], optuna.distributions.IntDistribution)
    assert dists["wd:off"].choices == (False, True)
    assert "net" not in dists
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []

    def objective(trial):
        config = space.suggest(trial)
        seen.append(config)
        assert space.from_optuna_params(trial.params) == config
        return config["lr"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=30)
    assert all(("momentum" in c) == (c["opt"] in ("sgd", "rmsprop")) for c in seen)
    for c in seen:  # inactive parameters are never asked
        assert space.validate(c) == c
    default = space.default()
    study.enqueue_trial(space.optuna_params(default))
    study.optimize(objective, n_trials=1)
    assert seen[-1] == default


def test_the_readme_search_space_loads_as_written(tmp_path):
    """The README's YAML example: its condition names a parameter of the included space."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("A search space in YAML:", 1)[1].split("```yaml\n", 1)[1]
    path = tmp_path / "space.yaml"
    path.write_text(block.split("```", 1)[0])
    space = SearchSpace.from_yaml(path)
    assert space.name == "mine"
    assert space["nesterov_boost"].when == (("optimizer", ("sgd",)),)
    assert {"dropout", "width", "clip", "optimizer", "lr"} <= {p.name for p in space.parameters}
    sgd = {**space.default(), "optimizer": "sgd", "momentum": 0.9, "nesterov_boost": True}
    sgd = {k: v for k, v in sgd.items() if not k.startswith("beta")}
    assert space.validate(sgd)["nesterov_boost"] is True
    assert space.default()["optimizer"] == "adam" and "nesterov_boost" not in space.default()

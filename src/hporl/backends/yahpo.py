"""A backend on any YAHPO Gym surrogate scenario: no training, a published ONNX model predicts
how a configuration does on one of the scenario's tasks.

YAHPO Gym (Pfisterer et al., "YAHPO Gym", AutoML Conf 2022; Apache-2.0) ships one folder per
scenario (``lcbench``, ``rbv2_rpart``, ...). This module reads such a folder on its own, without
the ``yahpo_gym`` package (which pins numpy<2 and an old ConfigSpace):

- ``model.onnx``: the surrogate, inputs ``x_cat`` (int32 ``[n, len(cat_names)]``, each value
  integer-encoded with ``encoding.json``) and ``x_cont`` (float32 ``[n, len(cont_names)]``, raw
  values: the graph applies its own transforms), output ``[n, len(targets)]``;
- ``config_space.json``: the scenario's parameters (ConfigSpace JSON: ranges, log and integer
  flags, categorical choices, constants, conditions);
- ``encoding.json``: the integer code of each value of each categorical input;
- ``parity_reference.json``: reference outputs of the official module and, under
  ``input_layout``, the order of the inputs (``cat_names`` / ``cont_names``; LCBench's file calls
  them ``categorical`` / ``continuous``), with ``instance_param``, ``fidelity_params`` and
  ``targets`` (LCBench's file has ``output_names`` only: its instance is ``OpenML_task_id``, its
  fidelity ``epoch``).

Parameters play one of these roles:

- the *instance* (``task_id``, LCBench's ``OpenML_task_id``): the task, one per choice;
- an *epoch fidelity* (``epoch``): the backend's epochs, a trial's curve has one point per epoch;
- another *fidelity* (rbv2's ``trainsize``, ``repl``): fixed at the top of its range, as YAHPO
  Gym's own single-fidelity objective fixes it (``trainsize = 1``: all the training data;
  ``repl = 10``: the last of rbv2's 10 replications, whose differences are resampling noise);
  ``fidelities={name: value}`` fixes another value;
- a *constant*: a ConfigSpace ``constant``, or a parameter that YAHPO Gym's benchmark experiments
  hold fixed (rbv2's ``num.impute.selected.cpo = "impute.mean"``); fed at its value;
- a *hyperparameter*: everything else, the backend's :class:`~hporl.space.SearchSpace` (its
  conditions as ``when:``). A hyperparameter that is not active in a configuration is fed as 0
  (continuous) or as the code of ``#na#`` (categorical), as ``yahpo_gym`` feeds it. LCBench uses
  hporl's built-in ``lcbench`` space (the same ranges plus the fixed ``optimizer: sgd`` and
  ``lr_schedule: cosine``, so a policy learned on it drives real training of LCBench's MLP).

The *target* is one output; higher is better in a :class:`~hporl.backends.TrialResult`, so a
target to minimise (``logloss``, ``brier``, ``time*``, ``memory``, cross-entropies, ...) is
negated (metric ``neg_<target>``): normalised regret is then the same as on the raw values. A
target whose direction hporl does not know is refused. Defaults: LCBench ``val_accuracy``
(percent in the surrogate, reported ``/ 100``), otherwise the first target that is maximised
(rbv2: ``acc``).

The folder is not shipped with hporl. A scenario named ``<name>`` is looked up as
``$HPORL_YAHPO_DATA/<name>`` and ``../shared/benchmarks/yahpo/<name>`` (from the working
directory, then from the checkout); ``HPORL_YAHPO_DATA`` may also be that scenario's own folder
(as it was LCBench's before other scenarios were read), and ``data_dir=`` is the scenario's folder.

Batches are padded to a multiple of 16 rows so that a row's prediction does not depend on the
batch it was computed in (onnxruntime's kernels treat a ragged tail of rows differently in the
last bits). Reading needs ``onnxruntime`` (``pip install 'hporl[bench]'``), imported when used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hporl._io import did_you_mean
from hporl.backends._base import Backend, EpochCallback, TrialResult, stop_epoch
from hporl.exceptions import ConfigError, SearchSpaceError
from hporl.space import SearchSpace

__all__ = ["YahpoBackend", "YahpoTask", "feature_names", "scenarios"]

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("model.onnx", "encoding.json", "config_space.json", "parity_reference.json")
_CHUNK = 100_000  # rows per session.run; a multiple of _PAD
_PAD = 16  # batches are padded to a multiple of this many rows (see the module docstring)
_ENV_DATA = "HPORL_YAHPO_DATA"
_ENV_CACHE = "HPORL_CACHE_DIR"
_NA = "#na#"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

# Names YAHPO Gym gives its instance and fidelity parameters, for a parity_reference.json that
# does not list them (LCBench's).
_INSTANCE_NAMES = ("OpenML_task_id", "task_id", "task", "task_name")
_FIDELITY_NAMES = ("epoch", "trainsize", "repl")
_EPOCH_NAMES = ("epoch",)
_LOSS_TARGETS = ("val_cross_entropy", "logloss", "valid_loss")
_RUNTIME_TARGETS = ("time", "timetrain", "runtime")
_MAXIMISED = ("acc", "bac", "auc", "f1")
_MINIMISED = ("logloss", "brier", "memory", "mmce", "mec", "ias", "nf", "n_params", "runtime")


@dataclass(frozen=True)
class _Profile:
    """What hporl knows of a scenario beyond its files."""

    title: str
    space: str | None = None  # a built-in space to use instead of the one built from the files
    constants: dict[str, Any] = field(default_factory=dict)
    percent: frozenset[str] = frozenset()  # targets reported in percent
    test_of: dict[str, str] = field(default_factory=dict)  # target -> its test-split output
    default_target: str | None = None


def _profile(scenario: str) -> _Profile:
    if scenario == "lcbench":
        return _Profile(
            "LCBench",
            space="lcbench",
            percent=frozenset({"val_accuracy"}),
            test_of={"val_accuracy": "test_balanced_accuracy"},
            default_target="val_accuracy",
        )
    if scenario.startswith("rbv2_"):
        # YAHPO Gym's benchmark experiments fix the imputation method of the rbv2 pipelines.
        return _Profile(scenario, constants={"num.impute.selected.cpo": "impute.mean"})
    return _Profile(scenario)


def _direction(target: str) -> int | None:
    """+1 when higher is better, -1 when lower is, ``None`` when unknown."""
    t = target.lower()
    if t in _MAXIMISED or "accuracy" in t or t.endswith(("_auc", "_f1")):
        return 1
    if t in _MINIMISED or t.startswith(("time", "ram")) or t.endswith("time"):
        return -1
    if any(word in t for word in ("loss", "entropy", "mse", "error", "memory")):
        return -1
    return None


def feature_names(scenario: str) -> list[str]:
    """Names of the features of a scenario's tasks: LCBench's size features, else none.

    Nothing is known of the tasks of other scenarios without their data (hporl ships no
    meta-features for them), so their tasks have zero features: a policy sees only the trials.
    """
    if scenario == "lcbench":
        from hporl.tasks._features import SIZE_FEATURE_NAMES

        return list(SIZE_FEATURE_NAMES)
    return []


# -- finding the folder ---------------------------------------------------------------------------
def _default_roots() -> list[Path]:
    rel = Path("..") / "shared" / "benchmarks" / "yahpo"
    repo_root = Path(__file__).resolve().parents[3]
    return [Path.cwd() / rel, repo_root / rel]


def _roots() -> list[Path]:
    env = os.environ.get(_ENV_DATA)
    return ([Path(env).expanduser()] if env else []) + _default_roots()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def scenarios() -> list[str]:
    """Names of the scenario folders found where :class:`YahpoBackend` looks (sorted)."""
    found: set[str] = set()
    for root in _roots():
        if root.is_dir():
            found.update(p.name for p in root.iterdir() if p.is_dir() and _complete(p))
    return sorted(found)


def _hint(scenario: str) -> str:
    return (
        f"pass data_dir= (the scenario's folder) or set {_ENV_DATA} to the folder of YAHPO "
        f"scenario folders, each holding {', '.join(REQUIRED_FILES)} (YAHPO Gym's {scenario} "
        "surrogate, data version 1.0.2)"
    )


def _find_folder(scenario: str | None, data_dir: str | Path | None) -> Path:
    label = _profile(scenario).title if scenario else "YAHPO"
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if scenario and not (folder / "model.onnx").is_file() and _complete(folder / scenario):
            folder = folder / scenario  # the folder of scenario folders
        for name in REQUIRED_FILES:
            if not (folder / name).is_file():
                raise ConfigError(
                    f"{label} surrogate file missing: {folder / name}; {_hint(label)}"
                )
        return folder.resolve()
    if scenario is None:
        raise ConfigError("a YAHPO backend needs a scenario name or its folder (data_dir=)")
    env = os.environ.get(_ENV_DATA)
    if env and _complete(Path(env).expanduser()):
        # The variable may name one scenario's own folder (as it named LCBench's before other
        # scenarios were read): used when it is that scenario's.
        folder = Path(env).expanduser()
        declared = _read_json(folder / "parity_reference.json").get("scenario")
        if scenario in (folder.name, declared) or (declared is None and scenario == "lcbench"):
            return folder.resolve()
    tried = [root / scenario for root in _roots()]
    for folder in tried:
        if _complete(folder):
            return folder.resolve()
    known = scenarios()
    where = " or ".join(str(p.resolve()) for p in tried)
    if known:
        raise ConfigError(
            f"unknown YAHPO scenario {scenario!r}: no complete folder {where}; scenarios found: "
            f"{', '.join(known)}." + did_you_mean(scenario, known)
        )
    raise ConfigError(f"{label} surrogate not found: no model.onnx in {where}; {_hint(label)}")


def _read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None


# -- the tasks ------------------------------------------------------------------------------------
class YahpoTask:
    """One task (instance) of a YAHPO scenario, as ``HPOEnv`` and the bench need it.

    ``features()`` is what is known of the task without its data: here nothing, a vector of
    length 0 (:class:`~hporl.backends.LCBenchTask` gives LCBench's size features). It never
    encodes the task id, so a policy cannot memorise tasks.
    """

    task_type = "classification"

    def __init__(
        self,
        name: str,
        *,
        scenario: str,
        epochs: int = 1,
        data_version: str = "",
        variant: str = "",
        metric_name: str = "score",
        chance_metric: float = 0.0,
        features: np.ndarray | None = None,
    ) -> None:
        self.name = str(name)
        self.scenario = scenario
        self.epochs = int(epochs)
        self.data_version = data_version
        self.variant = variant
        self.metric_name = metric_name
        self.chance_metric = float(chance_metric)
        self._features = (
            np.zeros(0, dtype=np.float32)
            if features is None
            else np.asarray(features, dtype=np.float32).reshape(-1)
        )

    @property
    def dataset_name(self) -> str | None:
        """The dataset's name (for reports), or ``None`` when unknown."""
        return None

    def features(self) -> np.ndarray:
        return self._features.copy()

    @property
    def fingerprint(self) -> str:
        """The scenario, data version, task and epochs; plus target and fixed fidelities when
        they are not the scenario's defaults."""
        text = f"{self.scenario}|{self.data_version}|{self.name}|{self.epochs}"
        if self.variant:
            text += f"|{self.variant}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"YahpoTask({self.name!r}, scenario={self.scenario!r}, epochs={self.epochs})"


# -- the scenario's parameters --------------------------------------------------------------------
def _hporl_spec(hp: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = hp.get("type")
    if kind in ("uniform_float", "uniform_int", "normal_float", "normal_int"):
        if "lower" not in hp or "upper" not in hp:
            raise ConfigError(f"{where}: parameter {hp['name']!r} ({kind}) has no bounds")
        is_int = kind.endswith("_int")
        spec: dict[str, Any] = {
            "type": "int" if is_int else "float",
            "low": int(hp["lower"]) if is_int else float(hp["lower"]),
            "high": int(hp["upper"]) if is_int else float(hp["upper"]),
        }
        if hp.get("log"):
            spec["log"] = True
    elif kind in ("categorical", "ordinal"):
        spec = {
            "type": "categorical",
            "choices": list(hp["choices" if kind == "categorical" else "sequence"]),
        }
    else:
        raise ConfigError(f"{where}: parameter {hp.get('name')!r} has unsupported type {kind!r}")
    if hp.get("default") is not None:
        spec["default"] = int(hp["default"]) if spec["type"] == "int" else hp["default"]
    return spec


def _condition_sets(
    cond: Mapping[str, Any], choices: Mapping[str, list[Any]], where: str
) -> dict[str, list[Any]]:
    """A ConfigSpace condition as ``{parent: allowed values}`` (all must hold)."""
    kind = cond.get("type")
    child = cond.get("child")
    if kind in ("AND", "OR"):
        parts = [_condition_sets(c, choices, where) for c in cond.get("conditions", [])]
        merged: dict[str, list[Any]] = {}
        if kind == "OR":
            parents = {p for part in parts for p in part}
            if len(parents) != 1 or any(len(part) != 1 for part in parts):
                raise ConfigError(
                    f"{where}: condition of {child!r}: an OR over several parents is not "
                    "supported (hporl's 'when' is a conjunction)"
                )
            (parent,) = parents
            values = [v for part in parts for v in part[parent]]
            return {parent: [v for v in choices[parent] if v in values]}
        for part in parts:
            for parent, values in part.items():
                merged[parent] = [v for v in merged.get(parent, values) if v in values]
        return merged
    parent = cond.get("parent")
    if parent not in choices:
        raise ConfigError(
            f"{where}: condition of {child!r} on {parent!r}: only conditions on categorical or "
            "constant parameters are supported"
        )
    if kind == "EQ":
        return {parent: [cond["value"]]}
    if kind == "IN":
        return {parent: list(cond["values"])}
    if kind == "NEQ":
        return {parent: [v for v in choices[parent] if v != cond["value"]]}
    raise ConfigError(
        f"{where}: condition of {child!r} on {parent!r}: type {kind!r} is not supported "
        "(EQ, NEQ, IN, AND and OR on one parent are)"
    )


@dataclass
class _Layout:
    """Roles and input order of a scenario's parameters (see the module docstring)."""

    cat_names: list[str]
    cont_names: list[str]
    instance: str
    targets: list[str]
    epoch: str | None  # the epoch fidelity
    max_epoch: int
    fixed: dict[str, Any]  # constants and fixed fidelities: the value fed
    fixed_fidelities: dict[str, Any]
    default_fidelities: dict[str, Any]
    never_active: set[str]  # hyperparameters whose condition no fixed value satisfies
    integer: set[str]
    space: SearchSpace
    task_ids: list[str]


def _layout(
    folder: Path, scenario: str, profile: _Profile, fidelities: Mapping[str, Any] | None
) -> _Layout:
    cs_path = folder / "config_space.json"
    cs = _read_json(cs_path)
    ref = _read_json(folder / "parity_reference.json")
    where = str(cs_path)
    hps = {h["name"]: h for h in cs.get("hyperparameters", [])}
    layout = ref.get("input_layout") or {}
    cat_names = [
        str(c).split(" (")[0] for c in layout.get("cat_names", layout.get("categorical", []))
    ]
    cont_names = [str(c) for c in layout.get("cont_names", layout.get("continuous", []))]
    targets = [str(t) for t in ref.get("targets", ref.get("output_names", []))]
    ref_path = folder / "parity_reference.json"
    if not (cat_names or cont_names) or not targets:
        raise ConfigError(
            f"{ref_path}: needs input_layout (cat_names, cont_names) and targets (or output_names)"
        )
    unknown = [n for n in cat_names + cont_names if n not in hps]
    if unknown:
        raise ConfigError(f"{ref_path}: input {unknown[0]!r} is not a parameter of {where}")
    instance = ref.get("instance_param") or next(
        (n for n in _INSTANCE_NAMES if n in cat_names), None
    )
    if instance not in cat_names:
        raise ConfigError(f"{ref_path}: no instance parameter (instance_param) among {cat_names}")
    fidelity_names = ref.get("fidelity_params")
    if fidelity_names is None:
        fidelity_names = [n for n in _FIDELITY_NAMES if n in cont_names]
    strange = [n for n in fidelity_names if n not in hps]
    if strange:
        raise ConfigError(f"{ref_path}: fidelity {strange[0]!r} is not a parameter of {where}")
    epoch = next((n for n in fidelity_names if n in _EPOCH_NAMES), None)
    max_epoch = int(hps[epoch]["upper"]) if epoch else 1

    fixed: dict[str, Any] = {}
    fixed_fidelities: dict[str, Any] = {}
    default_fidelities: dict[str, Any] = {}
    fidelities = dict(fidelities or {})
    for name in fidelity_names:
        if name == epoch:
            continue
        spec = _hporl_spec(hps[name], where)
        value = spec["choices"][-1] if spec["type"] == "categorical" else spec["high"]
        default_fidelities[name] = value
        if name in fidelities:
            try:
                value = SearchSpace.from_dict({name: spec}).validate({name: fidelities.pop(name)})
            except SearchSpaceError as err:
                raise ConfigError(f"fidelities: {err}") from None
            value = value[name]
        fixed[name] = fixed_fidelities[name] = value
    if fidelities:
        options = [n for n in fidelity_names if n != epoch]
        raise ConfigError(
            f"fidelities: {sorted(fidelities)[0]!r} is not a fixed fidelity of {scenario}; "
            f"its fixed fidelities: {', '.join(options) or 'none'}"
        )
    for name, hp in hps.items():
        if hp.get("type") == "constant":
            fixed[name] = hp["value"]
    for name, value in profile.constants.items():
        if name in hps:
            fixed[name] = value
    reserved = {instance, *fidelity_names}

    # Hyperparameters: the rest, with conditions; a condition on a fixed parameter is decided now.
    choices = {
        n: list(h.get("choices", h.get("sequence", [])))
        for n, h in hps.items()
        if h.get("type") in ("categorical", "ordinal")
    }
    choices.update({n: [v] for n, v in fixed.items()})
    when: dict[str, dict[str, list[Any]]] = {}
    for cond in cs.get("conditions", []):
        child = cond.get("child") or next(
            (c.get("child") for c in cond.get("conditions", []) if c.get("child")), None
        )
        own_when = when.setdefault(str(child), {})
        for parent, values in _condition_sets(cond, choices, where).items():
            prev = own_when.get(parent)
            own_when[parent] = values if prev is None else [v for v in prev if v in values]
    if cs.get("forbiddens"):
        logger.warning("%s: forbidden clauses are not supported and are ignored", where)
    free = [n for n in hps if n not in reserved and n not in fixed]
    for name in free:
        if instance in when.get(name, {}):
            raise ConfigError(f"{where}: {name!r} depends on the instance {instance!r}")
    never_active: set[str] = set()
    changed = True
    while changed:  # off when a fixed parent has another value, or a parent is never active
        changed = False
        for name in free:
            if name not in never_active and any(
                parent in never_active or (parent in fixed and fixed[parent] not in values)
                for parent, values in when.get(name, {}).items()
            ):
                never_active.add(name)
                changed = True
    params: dict[str, dict[str, Any]] = {}
    for name in free:
        if name in never_active:
            continue
        spec = _hporl_spec(hps[name], where)
        conds = {p: v for p, v in when.get(name, {}).items() if p not in fixed}
        if conds:
            spec["when"] = conds
        params[name] = spec
    try:
        own = SearchSpace.from_dict(params, name=scenario)
    except SearchSpaceError as err:
        raise ConfigError(f"{where}: {err}") from None
    space = own
    if profile.space is not None:
        space = SearchSpace.builtin(profile.space)
        _check_same_ranges(space, own, where)
    inputs = set(cat_names) | set(cont_names)
    orphans = [p.name for p in space.chosen if p.name not in inputs]
    if orphans:
        raise ConfigError(f"{ref_path}: hyperparameter {orphans[0]!r} is not a model input")
    roles = {instance, epoch, *fixed, *never_active, *(p.name for p in space.chosen)}
    unfed = sorted(inputs - roles)
    if unfed:
        raise ConfigError(
            f"{ref_path}: input {unfed[0]!r} is neither a hyperparameter of the space, the instance, a fidelity nor a constant"
        )
    integer = {n for n, h in hps.items() if h.get("type") in ("uniform_int", "normal_int")}
    task_ids = [str(c) for c in hps[instance].get("choices", [])]
    return _Layout(
        cat_names=cat_names,
        cont_names=cont_names,
        instance=instance,
        targets=targets,
        epoch=epoch,
        max_epoch=max_epoch,
        fixed=fixed,
        fixed_fidelities=fixed_fidelities,
        default_fidelities=default_fidelities,
        never_active=never_active,
        integer=integer,
        space=space,
        task_ids=task_ids,
    )


def _check_same_ranges(builtin: SearchSpace, own: SearchSpace, where: str) -> None:
    """The built-in space chooses exactly the scenario's hyperparameters, with its ranges."""
    chosen = {p.name: p for p in builtin.chosen}
    if set(chosen) != set(own.names):
        raise ConfigError(
            f"{where}: the built-in space {builtin.name!r} chooses {sorted(chosen)}, the "
            f"scenario has {sorted(own.names)}"
        )
    for p in own.parameters:
        q = chosen[p.name]
        same = p.kind == q.kind and p.log == q.log
        if p.is_numeric:
            same = same and math.isclose(p.low, q.low, rel_tol=1e-9)
            same = same and math.isclose(p.high, q.high, rel_tol=1e-9)
        if not same:
            raise ConfigError(f"{where}: {p.name!r} differs from the built-in {builtin.name!r}")


# -- the backend ----------------------------------------------------------------------------------
class YahpoBackend(Backend):
    """Looks a configuration up in a YAHPO Gym surrogate instead of training it.

    Args:
        scenario: a scenario name (``"rbv2_rpart"``; its folder is looked up as
            ``$HPORL_YAHPO_DATA/<name>`` or ``../shared/benchmarks/yahpo/<name>`` from the
            working directory or the checkout), or the path of a scenario folder.
        data_dir: the scenario's folder (or the folder of scenario folders).
        target: the output to optimise (default: see the module docstring).
        fidelities: values for the fixed fidelities (default: the top of each range).

    Results follow :class:`~hporl.backends.TrialResult`:

    - ``curve[i]`` is the target's score (higher is better) after epoch ``i + 1`` for a scenario
      with an epoch fidelity (E = ``epochs`` or ``task.epochs``, at most the scenario's last);
      a scenario without one gives a curve of one point (its tasks have ``epochs == 1``);
    - ``loss_curve`` is the scenario's validation loss (LCBench ``val_cross_entropy``, rbv2
      ``logloss``), else the negated score (a minimised target's raw value). The surrogate
      predicts no training loss, so ``train_loss_curve`` repeats ``loss_curve``;
    - ``test_metric`` is the target's test-split output at the best epoch where the scenario has
      one (LCBench: ``test_balanced_accuracy`` for ``val_accuracy``), else ``None``;
    - ``wall_time`` is the surrogate's predicted runtime (``time``, ``timetrain``) at the last
      epoch, in the seconds of the original runs (not the time spent here), else 0;
    - a missing hyperparameter, a value outside the scenario's ranges, or a fixed parameter at
      another value gives ``"failed"`` naming the key. Keys that are not hyperparameters are
      ignored.

    The surrogate is deterministic: ``seed`` changes nothing. ``checkpoint_dir`` is ignored.

    Raises:
        ConfigError: for a scenario or folder that is not found (naming the scenarios found), an
            incomplete or unreadable folder, or an unknown target (naming the targets).
    """

    resumable = True
    """Every epoch is predicted on its own: the curve of ``e`` epochs is a longer curve's first
    ``e`` points, so a trial continued to more epochs costs only the extra ones."""

    def __init__(
        self,
        scenario: str | Path | None = None,
        *,
        data_dir: str | Path | None = None,
        target: str | None = None,
        fidelities: Mapping[str, Any] | None = None,
    ) -> None:
        name: str | None = None
        if isinstance(scenario, Path) or (isinstance(scenario, str) and not _NAME.match(scenario)):
            if data_dir is not None:
                raise ConfigError("give a scenario folder or data_dir=, not both")
            data_dir = scenario
        elif scenario is not None:
            name = str(scenario)
        if name is None and data_dir is None:
            raise ConfigError("YahpoBackend needs a scenario name or its folder (data_dir=)")
        self.data_dir = _find_folder(name, data_dir)
        ref_scenario = _read_json(self.data_dir / "parity_reference.json").get("scenario")
        self.scenario: str = name or str(ref_scenario or self.data_dir.name)
        self.name = self.scenario
        self._profile = _profile(self.scenario)
        self._layout = lay = _layout(self.data_dir, self.scenario, self._profile, fidelities)
        self.space: SearchSpace = lay.space
        self.task_ids: list[str] = lay.task_ids
        self.targets: list[str] = lay.targets
        self.max_epoch: int = lay.max_epoch
        self.fixed_fidelities: dict[str, Any] = dict(lay.fixed_fidelities)
        self._session: Any = None
        self._sampled: dict[tuple[int, int], list[dict[str, Any]]] = {}

        enc_path = self.data_dir / "encoding.json"
        raw = _read_json(enc_path)
        self._codes: dict[str, dict[str, int]] = {
            str(k): {str(v): int(c) for v, c in m.items()} for k, m in raw.items()
        }
        for cat in lay.cat_names:
            if cat not in self._codes:
                raise ConfigError(f"{enc_path} has no codes for the input {cat!r}")
        missing = [t for t in self.task_ids if t not in self._codes[lay.instance]]
        if missing:
            raise ConfigError(f"{enc_path} has no code for task(s) {missing}")
        for p in self.space.chosen:
            if p.kind == "categorical" and p.name in lay.cat_names:
                for value in p.choices:
                    self._category(p.name, value)  # raises for a choice without a code
        for cat in lay.cat_names:
            if cat in lay.fixed:
                self._category(cat, lay.fixed[cat])

        self.target = self._pick_target(target)
        self.direction = int(_direction(self.target) or 0)
        self.metric_name = (
            "accuracy"
            if self.target in ("val_accuracy", "acc")
            else (self.target if self.direction > 0 else f"neg_{self.target}")
        )
        self.chance_metric = 0.5 if self.target.endswith("auc") else 0.0
        self._loss = next((t for t in _LOSS_TARGETS if t in self.targets), None)
        self._runtime = next((t for t in _RUNTIME_TARGETS if t in self.targets), None)
        test = self._profile.test_of.get(self.target)
        if test is None and self.target.startswith("val_"):
            test = "test_" + self.target[len("val_") :]
        self._test = test if test in self.targets else None
        self.feature_names: list[str] = feature_names(self.scenario)
        parts = [] if self.target == self.default_target else [f"target={self.target}"]
        parts += [
            f"{k}={v}"
            for k, v in sorted(lay.fixed_fidelities.items())
            if v != lay.default_fidelities[k]
        ]
        self._variant = ",".join(parts)

        version_file = self.data_dir.parent / "VERSION"
        # The file reads "VERSION:1.0.2"; keep what follows the label.
        text = version_file.read_text().strip() if version_file.is_file() else ""
        self.data_version = text.rpartition(":")[2].strip() or "unknown"

    # -- set-up ---------------------------------------------------------------------------------
    @property
    def default_target(self) -> str:
        """The target optimised when none is given."""
        preferred = self._profile.default_target
        if preferred in self.targets:
            return preferred
        found = next((t for t in self.targets if _direction(t) == 1), None)
        if found is None:
            raise ConfigError(
                f"YAHPO scenario {self.scenario}: no target is known to be maximised; pass "
                f"target= (one of {', '.join(self.targets)})"
            )
        return found

    def _pick_target(self, target: str | None) -> str:
        if target is None:
            return self.default_target
        if target not in self.targets:
            raise ConfigError(
                f"unknown target {target!r} for YAHPO scenario {self.scenario}; targets: "
                f"{', '.join(self.targets)}." + did_you_mean(str(target), self.targets)
            )
        if _direction(target) is None:
            raise ConfigError(
                f"target {target!r} of YAHPO scenario {self.scenario}: hporl does not know "
                "whether higher or lower is better, so it cannot score it; choose one of "
                + ", ".join(t for t in self.targets if _direction(t) is not None)
            )
        return target

    def _category(self, name: str, value: Any) -> int:
        codes = self._codes[name]
        for key in (str(value), str(value).upper(), str(value).capitalize()):
            if key in codes:
                return codes[key]
        raise ConfigError(
            f"{self.data_dir / 'encoding.json'} has no code for {name} = {value!r}; codes: "
            f"{', '.join(codes)}"
        )

    @property
    def session(self) -> Any:
        """The onnxruntime session, created on first use."""
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError as err:
                raise ConfigError(
                    f"the {self._profile.title} backend needs onnxruntime: "
                    "pip install 'hporl[bench]'"
                ) from err
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(self.data_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # an onnxruntime session does not pickle; rebuilt on use
        return state

    # -- tasks ----------------------------------------------------------------------------------
    def _new_task(self, name: str) -> YahpoTask:
        common = {
            "epochs": self.max_epoch,
            "data_version": self.data_version,
            "variant": self._variant,
            "metric_name": self.metric_name,
            "chance_metric": self.chance_metric,
        }
        if self.scenario == "lcbench":
            from hporl.backends.lcbench import LCBenchTask

            return LCBenchTask(name, **common)
        return YahpoTask(name, scenario=self.scenario, **common)

    def tasks(self) -> list[YahpoTask]:
        """All tasks, in ``config_space.json`` order."""
        return [self._new_task(t) for t in self.task_ids]

    def task(self, task_id: str | int) -> YahpoTask:
        """One task by id (e.g. ``"3945"``).

        Raises:
            ConfigError: for an id the surrogate does not know, suggesting the nearest.
        """
        key = str(task_id)
        if key not in self.task_ids:
            raise ConfigError(
                f"unknown {self._profile.title} task id {key!r}; the surrogate knows "
                f"{len(self.task_ids)} task ids ({', '.join(self.task_ids[:4])}, ...)."
                + did_you_mean(key, self.task_ids)
            )
        return self._new_task(key)

    def _code(self, task: Any) -> int:
        name = str(getattr(task, "name", task))
        if name not in self.task_ids:
            self.task(name)  # raises with a suggestion
        return self._codes[self._layout.instance][name]

    # -- raw predictions ------------------------------------------------------------------------
    def predict(
        self,
        task_ids: Sequence[str],
        configs: Sequence[Mapping[str, Any]],
        epochs: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Raw surrogate outputs, ``[n, len(targets)]`` float32 in :attr:`targets` order.

        Row ``i`` is ``configs[i]`` on ``task_ids[i]``, after ``epochs[i]`` epochs (clipped to
        the scenario's range; ignored without an epoch fidelity; default: the last). Values are
        fed raw (integer parameters rounded). A configuration may set a fixed fidelity or a
        constant (as ``parity_reference.json``'s records do); ranges are not checked here
        (:meth:`evaluate` checks them). One batched call per 100,000 rows.

        Raises:
            ConfigError: for unequal lengths, an unknown task id, or a missing or non-numeric
                hyperparameter.
        """
        lay = self._layout
        n = len(configs)
        if len(task_ids) != n or (epochs is not None and len(epochs) != n):
            raise ConfigError(
                f"predict needs as many task ids, configs and epochs; got {len(task_ids)}, "
                f"{n}, {'-' if epochs is None else len(epochs)}"
            )
        if n == 0:
            return np.zeros((0, len(self.targets)), dtype=np.float32)
        active = {p.name: self._active_mask(p.name, configs) for p in self.space.chosen if p.when}
        x_cat = np.empty((n, len(lay.cat_names)), dtype=np.int32)
        for j, name in enumerate(lay.cat_names):
            if name == lay.instance:
                codes = {t: self._code(t) for t in set(map(str, task_ids))}
                x_cat[:, j] = np.fromiter((codes[str(t)] for t in task_ids), np.int32, count=n)
                continue
            na = self._codes[name].get(_NA, 0)
            if name in lay.never_active:
                x_cat[:, j] = na
                continue
            if name in lay.fixed:  # a configuration may set it (see above)
                x_cat[:, j] = self._category(name, lay.fixed[name])
                for i in (i for i, c in enumerate(configs) if name in c):
                    x_cat[i, j] = self._category(name, configs[i][name])
                continue
            mask = active.get(name)
            values = self._column(configs, name, mask)
            x_cat[:, j] = [
                na if (mask is not None and not mask[i]) else self._category(name, v)
                for i, v in enumerate(values)
            ]
        x_cont = np.zeros((n, len(lay.cont_names)), dtype=np.float64)
        for j, name in enumerate(lay.cont_names):
            if name == lay.epoch:
                col = np.full(n, lay.max_epoch) if epochs is None else epochs
                x_cont[:, j] = np.clip(np.rint(np.asarray(col, dtype=np.float64)), 1, lay.max_epoch)
                continue
            if name in lay.never_active:
                continue  # fed as 0
            if name in lay.fixed:
                default = lay.fixed[name]
                col = [c.get(name, default) for c in configs]
                mask = None
            else:
                mask = active.get(name)
                col = self._column(configs, name, mask)
            try:
                values = np.asarray(col, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"hyperparameter {name!r} has a non-numeric value") from err
            if name in lay.integer:
                values = np.rint(values)
            if mask is not None:
                values = np.where(mask, values, 0.0)
            x_cont[:, j] = values
        return self._run(x_cat, x_cont.astype(np.float32))

    def _active_mask(self, name: str, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.fromiter(
            (self.space.is_active(name, c) for c in configs), dtype=bool, count=len(configs)
        )

    @staticmethod
    def _column(
        configs: Sequence[Mapping[str, Any]], name: str, mask: np.ndarray | None
    ) -> list[Any]:
        """Each configuration's value of ``name`` (0 where ``mask`` says inactive)."""
        try:
            if mask is None:
                return [c[name] for c in configs]
            return [c[name] if m else 0 for c, m in zip(configs, mask, strict=True)]
        except KeyError as err:
            raise ConfigError(f"configuration is missing the hyperparameter {name!r}") from err

    def _run(self, x_cat: np.ndarray, x_cont: np.ndarray) -> np.ndarray:
        session = self.session
        n = len(x_cat)
        out = np.empty((n, len(self.targets)), dtype=np.float32)
        for start in range(0, n, _CHUNK):
            cat, cont = x_cat[start : start + _CHUNK], x_cont[start : start + _CHUNK]
            m = len(cat)
            padded = -(-m // _PAD) * _PAD
            if padded > m:
                cat = np.concatenate([cat, np.repeat(cat[-1:], padded - m, axis=0)])
                cont = np.concatenate([cont, np.repeat(cont[-1:], padded - m, axis=0)])
            out[start : start + m] = session.run(None, {"x_cat": cat, "x_cont": cont})[0][:m]
        return out

    # -- scores ---------------------------------------------------------------------------------
    def _scores(self, rows: np.ndarray, target: str) -> np.ndarray:
        """Higher-is-better values of output ``target`` (float64): percent as a fraction, a
        minimised output negated with the direction of the backend's target."""
        col = rows[:, self.targets.index(target)].astype(np.float64)
        if target in self._profile.percent:
            col = col / 100.0
        return col * (self.direction if target in (self.target, self._test) else 1)

    def _check_config(self, config: Mapping[str, Any]) -> str | None:
        """Why ``config`` cannot be fed to the surrogate, or ``None`` when it can."""
        if not isinstance(config, Mapping):
            return f"a configuration must be a mapping, got {type(config).__name__}"
        title = self._profile.title
        for p in self.space.parameters:
            if not self.space.is_active(p.name, config):
                continue
            if p.kind == "fixed":
                if p.name in config and not p.contains(config[p.name]):
                    return (
                        f"hyperparameter {p.name!r} = {config[p.name]!r}: the {title} "
                        f"surrogate only knows {p.name}={p.default!r}"
                    )
                continue
            if p.name not in config:
                return f"configuration is missing the hyperparameter {p.name!r}"
            if not p.contains(config[p.name]):
                where = (
                    f"one of {list(p.choices)!r}"
                    if p.kind == "categorical"
                    else f"the {title} range [{p.low}, {p.high}]"
                    + (" (an integer)" if p.kind == "int" else "")
                )
                return f"hyperparameter {p.name!r} = {config[p.name]!r} is outside {where}"
        return None

    # -- evaluation -----------------------------------------------------------------------------
    def _epochs(self, task: Any, epochs: int | None) -> int:
        wanted = int(epochs or getattr(task, "epochs", self.max_epoch))
        return max(1, min(wanted, self.max_epoch))

    def _result(
        self,
        rows: np.ndarray,
        *,
        config: Mapping[str, Any],
        epochs: int,
        seed: int | None,
        on_epoch: EpochCallback | None,
    ) -> TrialResult:
        curve = self._scores(rows, self.target).tolist()
        stop = stop_epoch(curve, on_epoch)
        stopped = stop is not None
        curve = curve[:stop]
        k = len(curve)
        if self._loss is not None:
            loss = rows[:k, self.targets.index(self._loss)].astype(np.float64).tolist()
        else:  # the raw target when it is minimised
            loss = [-v for v in curve]
        common = {
            "metric_name": self.metric_name,
            "chance_metric": self.chance_metric,
            "epochs": epochs,
            "seed": seed,
            "config": dict(config),
        }
        bad = next((i for i in range(k) if not math.isfinite(curve[i] + loss[i])), None)
        if bad is not None:  # never seen with the shipped models; kept for the contract
            return TrialResult.from_curves(
                curve=curve[:bad],
                loss_curve=loss[:bad],
                train_loss_curve=loss[:bad],
                status="diverged",
                reason=f"non-finite surrogate output in epoch {bad + 1}",
                **common,
            )
        wall = float(rows[k - 1, self.targets.index(self._runtime)]) if self._runtime else 0.0
        result = TrialResult.from_curves(
            curve=curve,
            loss_curve=loss,
            train_loss_curve=list(loss),
            status="ok",
            wall_time=wall,
            stopped_early=stopped,
            **common,
        )
        if result.best_epoch is not None and self._test is not None:
            best = rows[result.best_epoch - 1 : result.best_epoch]
            result.test_metric = float(self._scores(best, self._test)[0])
        return result

    def _failed(
        self, reason: str, config: Any, epochs: int, seed: int | None = None
    ) -> TrialResult:
        return TrialResult(
            status="failed",
            metric_name=self.metric_name,
            reason=reason,
            chance_metric=self.chance_metric,
            epochs=epochs,
            seed=seed,
            config=dict(config) if isinstance(config, Mapping) else {},
        )

    def evaluate(
        self,
        task: Any,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        epochs: int | None = None,
        checkpoint_dir: str | Path | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> TrialResult:
        """Predict ``config``'s curve on ``task`` (all epochs in one batched call)."""
        n_epochs = self._epochs(task, epochs)
        reason = self._check_config(config)
        if reason is not None:
            return self._failed(reason, config, n_epochs, seed)
        name = str(getattr(task, "name", task))
        rows = self.predict([name] * n_epochs, [config] * n_epochs, range(1, n_epochs + 1))
        return self._result(rows, config=config, epochs=n_epochs, seed=seed, on_epoch=on_epoch)

    def evaluate_many(
        self,
        task: Any,
        configs: Sequence[Mapping[str, Any]],
        *,
        epochs: int | None = None,
    ) -> list[TrialResult]:
        """:meth:`evaluate` for many configurations, with one batched prediction for all."""
        n_epochs = self._epochs(task, epochs)
        reasons = [self._check_config(c) for c in configs]
        good = [c for c, r in zip(configs, reasons, strict=True) if r is None]
        name = str(getattr(task, "name", task))
        rows = self.predict(
            [name] * (len(good) * n_epochs),
            [c for c in good for _ in range(n_epochs)],
            [e for _ in good for e in range(1, n_epochs + 1)],
        )
        out, i = [], 0
        for config, reason in zip(configs, reasons, strict=True):
            if reason is not None:
                out.append(self._failed(reason, config, n_epochs, 0))
                continue
            block = rows[i * n_epochs : (i + 1) * n_epochs]
            out.append(self._result(block, config=config, epochs=n_epochs, seed=0, on_epoch=None))
            i += 1
        return out

    def final_scores(
        self, task: Any, configs: Sequence[Mapping[str, Any]], *, epoch: int | None = None
    ) -> np.ndarray:
        """The target's score at ``epoch`` (default: the last) for each configuration (batched,
        float64; what ``curve[epoch - 1]`` of :meth:`evaluate` holds).

        Configurations are not range-checked (see :meth:`evaluate` for that).
        """
        return self.final_scores_on([task], configs, epoch=epoch)[0]

    def final_scores_on(
        self,
        tasks: Sequence[Any],
        configs: Sequence[Mapping[str, Any]],
        *,
        epoch: int | None = None,
    ) -> np.ndarray:
        """:meth:`final_scores` of the same configurations on many tasks, ``[t, i]``, in one
        batched prediction (the same values as one call per task, less overhead per call)."""
        names = [str(getattr(task, "name", task)) for task in tasks]
        epoch = self.max_epoch if epoch is None else epoch
        n = len(names) * len(configs)
        rows = self.predict(
            [t for t in names for _ in configs], list(configs) * len(names), [epoch] * n
        )
        return self._scores(rows, self.target).reshape(len(names), len(configs))

    # -- normalisation --------------------------------------------------------------------------
    def normalisation(
        self,
        task: Any,
        *,
        n: int = 10_000,
        seed: int = 0,
        cache_dir: str | Path | None = None,
    ) -> tuple[float, float]:
        """``(y_min, y_max)`` of the target's final score over ``n`` random configurations.

        The configurations are ``n`` successive ``space.sample(rng)`` draws from one
        ``np.random.default_rng(seed)``, the same for every task. The result is cached as JSON
        under ``cache_dir`` (else ``$HPORL_CACHE_DIR``, else ``~/.cache/hporl/yahpo``), keyed by
        scenario, target, fixed fidelities, task, ``n``, ``seed`` and the data version.
        """
        name = str(getattr(task, "name", task))
        self._code(name)
        folder = Path(
            cache_dir or os.environ.get(_ENV_CACHE) or Path.home() / ".cache" / "hporl" / "yahpo"
        ).expanduser()

        def safe(text: str) -> str:
            return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in text)

        variant = (
            f"_{hashlib.sha256(self._variant.encode()).hexdigest()[:8]}" if self._variant else ""
        )
        path = folder / (
            f"norm_{safe(self.scenario)}{variant}_{safe(name)}_n{n}_seed{seed}_"
            f"v{safe(self.data_version)}.json"
        )
        key = {
            "scenario": self.scenario,
            "variant": self._variant,
            "task": name,
            "n": int(n),
            "seed": int(seed),
            "data_version": self.data_version,
        }
        if path.is_file():
            try:
                with open(path) as f:
                    cached = json.load(f)
                if all(cached.get(k) == v for k, v in key.items()):
                    return float(cached["y_min"]), float(cached["y_max"])
                logger.warning("ignoring %s: it was written for %s", path, cached)
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning("ignoring unreadable normalisation cache %s: %s", path, err)
        start = time.perf_counter()
        if (n, seed) not in self._sampled:  # the same draws serve every task
            rng = np.random.default_rng(seed)
            self._sampled = {(n, seed): [self.space.sample(rng) for _ in range(n)]}
        scores = self.final_scores(name, self._sampled[(n, seed)])
        y_min, y_max = float(np.nanmin(scores)), float(np.nanmax(scores))
        logger.debug(
            "normalisation of %s task %s over %d configs: %.2fs",
            self.scenario,
            name,
            n,
            time.perf_counter() - start,
        )
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({**key, "y_min": y_min, "y_max": y_max}, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return y_min, y_max

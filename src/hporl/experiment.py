"""``run_experiment``: meta-train an agent over many tasks and return the resulting Policy."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hporl._io import explain_validation, read_yaml, writable_dir, write_json
from hporl.agents import AgentConfig, train_agent
from hporl.backends import Backend, SyntheticBackend, SyntheticTask, TorchBackend
from hporl.backends.torch_backend import checked_device
from hporl.env import HPOEnv, TaskAugmentation
from hporl.evaluation import Evaluator
from hporl.exceptions import ConfigError
from hporl.observation import FIDELITIES, ObservationLayout
from hporl.policy import Policy
from hporl.pretrain import (
    CandidateValues,
    PretrainConfig,
    anchor_callback,
    anchored,
    behaviour_clone,
    build_portfolio,
    expert_steps,
    halving_steps,
)
from hporl.rewards import RewardApproach
from hporl.space import SearchSpace, builtin_spaces
from hporl.store import TrialStore, mask_url, storage_url
from hporl.tasks import FEATURE_NAMES, Task, builtin, suites
from hporl.tasks import models as _models
from hporl.vec_env import FanOutVecEnv

__all__ = [
    "BackendConfig",
    "CsvTaskSpec",
    "ExperimentConfig",
    "SyntheticTaskSpec",
    "run_experiment",
]

logger = logging.getLogger(__name__)

MODELS = {
    "mlp": _models.make_mlp,
    "linear": _models.linear,
    "cnn": _models.make_cnn,
    "lcbench_mlp": _models.lcbench_mlp,
}


class CsvTaskSpec(BaseModel):
    """A task read from a CSV file."""

    model_config = ConfigDict(extra="forbid")
    csv: str
    target: str
    name: str | None = None
    model: Literal["mlp", "linear", "cnn", "lcbench_mlp"] | None = None
    epochs: int | None = Field(None, gt=0)


class SyntheticTaskSpec(BaseModel):
    """``n`` synthetic tasks (feature vectors only), for the ``synthetic`` backend."""

    model_config = ConfigDict(extra="forbid")
    synthetic: int = Field(gt=0)
    n_features: int = Field(4, gt=0)
    seed: int = 0


class BackendConfig(BaseModel):
    """What evaluates configurations: ``torch`` (real training), ``synthetic`` (feature-vector
    tasks), or ``surrogate`` (a :class:`~hporl.backends.SurrogateBackend` fitted on real trials
    by ``hporl surrogate fit``; ``{surrogate: DIR}`` is enough)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["torch", "synthetic", "surrogate"] = "torch"
    surrogate: str | None = Field(
        None, description="the directory of a surrogate made by `hporl surrogate fit`"
    )
    noise: float = Field(
        0.0,
        ge=0,
        description="surrogate only: seeded noise on each result, in units of the spread of "
        "the surrogate's ensemble (0: its mean)",
    )
    epochs: int | None = Field(
        None, gt=0, description="epochs per trial (default: each task's own)"
    )
    num_threads: int | None = Field(1, gt=0)
    device: Annotated[str, AfterValidator(checked_device)] = "cpu"
    trial_seed: int = Field(0, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _surrogate_directory(self) -> BackendConfig:
        if self.surrogate is not None:
            if "name" in self.model_fields_set and self.name != "surrogate":
                raise ValueError(
                    f"surrogate: a surrogate directory goes with name surrogate, not {self.name!r}"
                )
            self.name = "surrogate"
        elif self.name == "surrogate":
            raise ValueError("name surrogate needs the directory: {surrogate: DIR}")
        if self.noise and self.name != "surrogate":
            raise ValueError("noise: only a surrogate backend adds noise")
        return self


class ExperimentConfig(BaseModel):
    """A meta-training run. In YAML::

    name: first
    tasks: [small, breast_cancer, synth_clf_0]   # suites, built-in tasks, {csv:, target:}
    space: optimizer                              # built-in name, YAML path, or a mapping
    backend: {name: torch, epochs: 5}
    reward: best_metric
    budget: 3                                     # K trials per episode
    agent: {algorithm: maskable_ppo, total_timesteps: 3000}
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = "experiment"
    tasks: list[str | CsvTaskSpec | SyntheticTaskSpec | Task] = Field(min_length=1)
    space: str | dict[str, Any] = "optimizer"
    backend: BackendConfig = Field(default_factory=BackendConfig)
    reward: str = "best_metric"
    budget: int = Field(
        3,
        gt=0,
        le=10_000,
        description="K: trials per episode (budget_unit: epochs: full-training equivalents)",
    )
    budget_unit: Literal["trials", "epochs"] = Field(
        "trials",
        description="trials: each episode runs K full trials; epochs: a budget-aware policy, "
        "which chooses each trial's fidelity (or continues a trial) and spends budget x the "
        "task's epochs per episode (see hporl.env)",
    )
    fidelities: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: list(FIDELITIES),
        max_length=16,
        description="with budget_unit: epochs, the fractions of the full epochs a trial may "
        "train for (increasing, the last 1)",
    )
    n_bins: int = Field(64, ge=3, le=4096, description="bins per numeric parameter")
    history: int | None = Field(
        None, ge=0, le=10_000, description="trial slots in the observation (default: the budget)"
    )
    model: Literal["mlp", "linear", "cnn", "lcbench_mlp"] | None = None
    augment: TaskAugmentation | None = Field(
        None, description="task augmentation per episode (see hporl.env.TaskAugmentation)"
    )
    agent: AgentConfig = Field(default_factory=AgentConfig)
    pretrain: PretrainConfig | None = Field(
        None, description="behaviour cloning of a greedy portfolio before RL (see hporl.pretrain)"
    )
    out: str | None = None
    storage: str | None = Field(
        None,
        description="trial store: an optuna storage URL or a SQLite path (default RUN_DIR/trials.db)",
    )

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, value: str) -> str:
        from hporl import rewards

        rewards.get(value)  # raises ConfigError naming the choices
        return value

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        data = read_yaml(path, what="experiment", error=ConfigError)
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{path}: an experiment file must be a mapping of keys, got {type(data).__name__}"
            )
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, source: str = "experiment") -> ExperimentConfig:
        """Validate a mapping; errors name the key, and suggest the nearest valid one."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as err:
            raise ConfigError(f"{source}: {explain_validation(err, cls)}") from None


# -- resolving the parts ----------------------------------------------------------------------------
def resolve_space(
    space: str | Mapping[str, Any] | SearchSpace | Sequence[str | Mapping[str, Any]],
) -> SearchSpace:
    """A space from a built-in name, a YAML path, a mapping, or a list of them composed in order.

    Raises:
        ConfigError: a name that is neither a built-in space nor a YAML file.
    """
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, Mapping):
        return SearchSpace.from_dict(space)
    if isinstance(space, Sequence) and not isinstance(space, str):
        if not space:
            raise ConfigError("space: an empty list of spaces")
        parts = [resolve_space(part) for part in space]
        composed = parts[0]
        for part in parts[1:]:
            composed = composed + part
        return composed
    if space in builtin_spaces():
        return SearchSpace.builtin(space)
    if Path(space).is_file():
        return SearchSpace.from_yaml(space)
    raise ConfigError(
        f"space {space!r} is neither a built-in space ({', '.join(builtin_spaces())}) nor a YAML file"
    )


def resolve_tasks(config: ExperimentConfig) -> list[Any]:
    """Build every task of the experiment (suites expanded)."""
    model = MODELS[config.model] if config.model else None
    out: list[Any] = []
    for entry in config.tasks:
        if isinstance(entry, Task):
            out.append(entry)
        elif isinstance(entry, SyntheticTaskSpec):
            out += SyntheticTask.sample(entry.seed, entry.synthetic, n_features=entry.n_features)
        elif isinstance(entry, CsvTaskSpec):
            m = MODELS[entry.model] if entry.model else model
            kwargs = {"epochs": entry.epochs} if entry.epochs else {}
            out.append(
                Task.from_csv(
                    entry.csv,
                    target=entry.target,
                    model=m,
                    name=entry.name or Path(entry.csv).stem,
                    **kwargs,
                )
            )
        elif entry in suites():
            out += [builtin(n, model=model) for n in suites()[entry]]
        else:
            out.append(builtin(entry, model=model))
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        logger.warning("tasks listed more than once: %s", ", ".join(dupes))
    return out


def resolve_backend(config: BackendConfig, space: SearchSpace, *, resume: bool = False) -> Backend:
    """The backend an experiment evaluates with; ``resume``: real training keeps checkpoints and
    continues them (budgets in epochs, see :class:`~hporl.backends.TorchBackend`)."""
    if config.name == "synthetic":
        return SyntheticBackend(space)
    if config.name == "surrogate":
        from hporl.backends.surrogate import SurrogateBackend

        return SurrogateBackend.load(config.surrogate, noise=config.noise)
    return TorchBackend(device=config.device, num_threads=config.num_threads, resume=resume)


# -- the run ----------------------------------------------------------------------------------------
def run_experiment(
    config: ExperimentConfig | Mapping[str, Any] | str | Path,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress_bar: bool = False,
    storage: str | Path | None = None,
) -> Policy:
    """Meta-train an agent on the experiment's tasks; save and return the Policy.

    The run directory (``out``, else the config's ``out``, else ``runs/<name>``) receives
    ``experiment.json``, ``checkpoints/``, ``logs/`` (SB3 CSV, TensorBoard when installed),
    ``summary.json`` and ``policy/``. With ``resume``, training continues from the latest
    checkpoint there.

    With real training, every evaluation goes through the trial store (``storage``, else the
    config's ``storage``, else ``RUN_DIR/trials.db``; one study per task, ``<name>/<task>``):
    an evaluation already there (from this run before a crash, or any other run on the same
    task data and model) is reused, not trained again.
    """
    if isinstance(config, (str, Path)):
        config = ExperimentConfig.from_yaml(config)
    elif isinstance(config, Mapping):
        config = ExperimentConfig.parse(config)
    run_dir = Path(out or config.out or Path("runs") / config.name)
    writable_dir(run_dir, "run directory")
    space = resolve_space(config.space)
    tasks = resolve_tasks(config)
    backend = resolve_backend(config.backend, space, resume=config.budget_unit == "epochs")
    is_synthetic = config.backend.name == "synthetic"
    store = None
    if config.backend.name == "torch":  # predictions are never kept with real trials
        store = TrialStore(storage_url(storage or config.storage, run_dir))
    if is_synthetic and not all(isinstance(t, SyntheticTask) for t in tasks):
        raise ConfigError(
            "the synthetic backend needs synthetic tasks ({synthetic: N}); others need backend torch"
        )
    if not is_synthetic and any(isinstance(t, SyntheticTask) for t in tasks):
        raise ConfigError("synthetic tasks ({synthetic: N}) need backend: {name: synthetic}")
    for task in tasks:  # what training would misread, before anything is written
        backend.check_space(space, task)
    write_json(
        run_dir / "experiment.json",
        config.model_dump(mode="json", exclude={"tasks"}) | {"tasks": [t.name for t in tasks]},
    )

    agent = config.agent
    evaluator = Evaluator(
        backend,
        store=store,
        run=config.name,
        space=space,
        executor=agent.executor,
        # A surrogate's evaluations take a millisecond: in this process, not one per env.
        n_workers=agent.n_workers or (1 if config.backend.name == "surrogate" else agent.n_envs),
        ray_address=agent.ray_address,
    )
    return meta_train(
        space,
        evaluator,
        tasks,
        agent=config.agent,
        pretrain=config.pretrain,
        run_dir=run_dir,
        reward=config.reward,
        budget=config.budget,
        n_bins=config.n_bins,
        history=config.history,
        augment=config.augment,
        epochs=config.backend.epochs,
        trial_seed=config.backend.trial_seed,
        fidelities=config.fidelities if config.budget_unit == "epochs" else None,
        resume=resume,
        progress_bar=progress_bar,
        feature_names=None if is_synthetic else list(FEATURE_NAMES),
        meta={"experiment": config.name, "backend": config.backend.name}
        | ({"surrogate": config.backend.surrogate} if config.backend.surrogate else {}),
    )


@contextlib.contextmanager
def _progress(show: bool, what: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar over ``total`` training tasks (or nothing)."""
    if not show:
        yield None
        return
    with progress_bar(what + " on training tasks", total) as update:
        yield update


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar of ``total`` steps with an estimate of the time left; yields
    ``update(done)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        job = bar.add_task("", total=total)
        yield lambda done: bar.update(job, completed=done)


def meta_train(
    space: SearchSpace,
    evaluator: Evaluator,
    tasks: list[Any],
    *,
    agent: AgentConfig,
    run_dir: Path,
    pretrain: PretrainConfig | None = None,
    reward: str | RewardApproach = "best_metric",
    budget: int = 3,
    n_bins: int = 64,
    history: int | None = None,
    augment: TaskAugmentation | None = None,
    layout_version: int = 2,
    epochs: int | None = None,
    trial_seed: int = 0,
    resume: bool = False,
    progress_bar: bool = False,
    feature_names: list[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    candidate_values: CandidateValues | None = None,
    fidelities: Sequence[float] | None = None,
) -> Policy:
    """Meta-train on already built parts (what :func:`run_experiment` and ``hporl bench`` share).

    Every env shares ``evaluator`` (its cache, store and workers); ``candidate_values(task,
    configs)`` lets a caller score the warm start's candidates in bulk. ``fidelities``: a
    budget-aware policy (``budget`` in full-training equivalents of epochs, see
    :class:`~hporl.env.HPOEnv`).
    """
    feature_norm = ObservationLayout.normalisation([t.features() for t in tasks])
    evaluator.start(*tasks)

    def make_env(extra_bins: tuple = (), augment: TaskAugmentation | None = None) -> HPOEnv:
        return HPOEnv(
            space,
            evaluator,
            tasks,
            reward=reward,
            budget=budget,
            n_bins=n_bins,
            history=history,
            epochs=epochs,
            trial_seed=trial_seed,
            feature_norm=feature_norm,
            extra_bins=extra_bins,
            augment=augment,
            layout_version=layout_version,
            fidelities=fidelities,
        )

    env = make_env()  # fails early on bad parts, before any subprocess starts
    start = time.perf_counter()
    pretrain_summary: dict[str, Any] = {}
    portfolio = None
    if pretrain is not None:
        # Chosen before the agent exists: its values may widen the action space (exact play).
        with _progress(
            progress_bar, f"warm start: {pretrain.candidates} candidates", len(tasks)
        ) as bar:
            portfolio = build_portfolio(
                env, tasks, pretrain, values_fn=candidate_values, progress=bar
            )
        if pretrain.candidate_sampling == "space":
            extra = ObservationLayout.extra_bins_of(space, portfolio.configs)
            make_env = functools.partial(make_env, extra)
            env = make_env()

    def warm_start(new_agent: Any) -> None:
        if pretrain is None or portfolio is None:
            return
        if pretrain.expert == "halving":
            steps = halving_steps(env, tasks, portfolio)
        else:
            steps = expert_steps(env, tasks, portfolio)
        stats = behaviour_clone(new_agent, agent.algorithm, steps, pretrain)
        if pretrain.anchor_trials:
            anchor["anchor"] = anchored(steps, pretrain.anchor_trials)
        pretrain_summary.update(
            candidates=len(portfolio.candidates),
            portfolio=portfolio.configs,
            portfolio_mean_regret=portfolio.mean_regret(),
            evaluations=evaluator.n_trained,
            seconds=time.perf_counter() - start,
            **stats,
        )
        write_json(run_dir / "portfolio.json", pretrain_summary)
        logger.info("behaviour cloning: %s", stats)

    anchor: dict[str, Any] = {}
    callback = (
        anchor_callback(anchor, agent.algorithm, pretrain)
        if pretrain and pretrain.anchor_trials
        else None
    )
    # One env is the warm start's env; several (a FanOutVecEnv, whose trainings run at once on
    # the evaluator's workers) share its evaluator.
    # The warm start's env shows tasks as they are; the RL envs augment them when asked.
    rl_env = functools.partial(make_env, augment=augment)
    env_fns = [lambda: env] if agent.n_envs == 1 and augment is None else [rl_env] * agent.n_envs
    trained = train_agent(
        agent,
        env_fns,
        run_dir=run_dir,
        resume=resume,
        progress_bar=progress_bar,
        on_new_agent=warm_start,
        callback=callback,
    )
    policy = Policy.from_agent(
        trained,
        env.layout,
        algorithm=agent.algorithm,
        policy_kwargs=agent.policy_kwargs(env.layout),
        reward=reward if isinstance(reward, str) else reward.name,
        feature_names=feature_names,
        training_tasks=[t.name for t in tasks],
        meta={
            **(meta or {}),
            "timesteps": int(trained.num_timesteps),
            "budget_unit": "epochs" if env.layout.budget_aware else "trials",
        },
    )
    policy.save(run_dir / "policy")
    vec_env = trained.get_env()
    counts: dict[str, Any] = {
        "trained": evaluator.n_trained,
        "cache_hits": evaluator.n_memory_hits,
        "store_hits": evaluator.n_store_hits,
        "shared": evaluator.n_shared,
        "retried": evaluator.n_retried,
    }
    if isinstance(vec_env, FanOutVecEnv):
        counts["waits"] = vec_env.n_waits
    if evaluator.store is not None:
        counts["storage"] = mask_url(evaluator.store.url)
    write_json(
        run_dir / "summary.json",
        {
            "timesteps": int(trained.num_timesteps),
            "seconds": time.perf_counter() - start,
            "tasks": len(tasks),
            **counts,
            "policy": str(run_dir / "policy"),
        },
    )
    return policy

"""Build and train Stable-Baselines3 agents on :class:`~hporl.HPOEnv` from a config."""

from __future__ import annotations

import io
import json
import logging
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import gymnasium as gym
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from torch import nn

from hporl._io import atomic_write, verify_checksum, write_checksum
from hporl.backends.torch_backend import checked_device
from hporl.exceptions import ConfigError
from hporl.observation import TOKEN_PRESENT

__all__ = [
    "ALGORITHMS",
    "AgentConfig",
    "HistoryExtractor",
    "action_logits",
    "build_agent",
    "latest_checkpoint",
    "policy_class",
    "state_values",
    "train_agent",
]

logger = logging.getLogger(__name__)

ALGORITHMS = ("maskable_ppo", "ppo", "a2c", "dqn")
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}

# Defaults suited to HPOEnv's short episodes (tens of steps); ``params`` overrides any of them.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "maskable_ppo": {
        "n_steps": 256,
        "batch_size": 64,
        "n_epochs": 10,
        "ent_coef": 0.01,
        "gamma": 1.0,
    },
    "ppo": {"n_steps": 256, "batch_size": 64, "n_epochs": 10, "ent_coef": 0.01, "gamma": 1.0},
    "a2c": {"n_steps": 16, "ent_coef": 0.01, "gamma": 1.0},
    "dqn": {
        "learning_starts": 200,
        "buffer_size": 20_000,
        "train_freq": 4,
        "exploration_fraction": 0.3,
        "target_update_interval": 500,
        "gamma": 1.0,
    },
}


class AgentConfig(BaseModel):
    """The RL agent: algorithm, its hyperparameters, network, budget and seed."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["maskable_ppo", "ppo", "a2c", "dqn"] = "maskable_ppo"
    total_timesteps: int = Field(20_000, gt=0)
    n_envs: int = Field(1, gt=0)
    seed: int = 0
    net_arch: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [64, 64], max_length=16
    )
    activation: Literal["tanh", "relu"] = "tanh"
    learning_rate: float = Field(3e-4, gt=0, le=1.0)
    params: dict[str, Any] = Field(default_factory=dict)
    checkpoint_every: int = Field(5_000, gt=0)
    device: Annotated[str, AfterValidator(checked_device)] = "cpu"
    executor: Literal["local", "ray"] = Field(
        "local",
        description="where the trainings of n_envs > 1 environments run: a local process pool "
        "(one process per env), or Ray workers",
    )
    ray_address: str | None = None
    wait: Literal["round", "own"] = Field(
        "round",
        description="with n_envs > 1, what an env that has chosen its configuration waits for: "
        "every env's trainings of the round, or its own (see hporl.vec_env.FanOutVecEnv)",
    )
    n_workers: int | None = Field(
        None,
        gt=0,
        description="workers training the envs' configurations (default: one per env); "
        "fewer than n_envs packs a round's trainings of unequal length onto busy workers",
    )

    extractor: Literal["history", "mlp"] = Field(
        "history",
        description="history: a set encoder over the trial tokens (HistoryExtractor); "
        "mlp: the flat observation straight into the MLP",
    )
    d_model: int = Field(64, gt=0, le=1024, description="width of the history encoder")

    @field_validator("params")
    @classmethod
    def _sane_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The counts SB3 would only trip over mid-training: positive integers, bounded."""
        minimum = {"learning_starts": 0}
        for key in (
            "n_steps",
            "batch_size",
            "n_epochs",
            "buffer_size",
            "learning_starts",
            "train_freq",
            "target_update_interval",
            "gradient_steps",
        ):
            if key in value:
                v, low = value[key], minimum.get(key, 1)
                if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= 10**8:
                    raise ValueError(
                        f"params.{key} must be an integer in [{low}, 10**8], got {v!r}"
                    )
        for key in ("gamma", "gae_lambda", "ent_coef", "vf_coef", "clip_range", "max_grad_norm"):
            if key in value:
                v = value[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1e6:
                    raise ValueError(f"params.{key} must be a finite number >= 0, got {v!r}")
        return value

    def policy_kwargs(self, layout: Any = None) -> dict[str, Any]:
        """JSON-ready network description (also stored with a saved Policy). ``layout`` (an
        :class:`~hporl.observation.ObservationLayout`) places the history encoder's tokens."""
        out: dict[str, Any] = {"net_arch": list(self.net_arch), "activation": self.activation}
        if self.extractor == "history" and layout is not None and layout.version == 2:
            offset, n_tokens, width = layout.tokens
            out["extractor"] = {
                "name": "history",
                "d_model": self.d_model,
                "head_dim": offset,
                "n_tokens": n_tokens,
                "token_width": width,
                "present": layout.space.dim + TOKEN_PRESENT,
            }
        return out


def _algorithm_class(name: str) -> type[BaseAlgorithm]:
    if name == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO

    return {"ppo": PPO, "a2c": A2C, "dqn": DQN}[name]


def policy_class(name: str) -> type[nn.Module]:
    """The SB3 policy (network) class an algorithm trains."""
    if name == "maskable_ppo":
        from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

        return MaskableActorCriticPolicy
    if name == "dqn":
        from stable_baselines3.dqn.policies import DQNPolicy

        return DQNPolicy
    from stable_baselines3.common.policies import ActorCriticPolicy

    return ActorCriticPolicy


def action_logits(network: nn.Module, algorithm: str, obs: torch.Tensor) -> torch.Tensor:
    """Unmasked action scores of an SB3 network of ``algorithm``, one row per observation: the
    action distribution's logits (maskable_ppo, ppo, a2c) or the Q-values (dqn)."""
    if algorithm == "dqn":
        return network.q_net(obs)
    # The actor's head straight away (what get_distribution computes before it builds a
    # distribution object; a policy proposes with this, one call per parameter).
    features = network.pi_features_extractor(obs.float())
    return network.action_net(network.mlp_extractor.forward_actor(features))


def state_values(network: nn.Module, algorithm: str, obs: torch.Tensor) -> torch.Tensor | None:
    """The critic's value of each observation (1-D), or ``None`` for dqn, which has no critic."""
    if algorithm == "dqn":
        return None
    return network.predict_values(obs).reshape(-1)


def sb3_policy_kwargs(policy_kwargs: dict[str, Any]) -> dict[str, Any]:
    """SB3's policy keyword arguments from hporl's JSON network description (bounded: it may
    come from a policy.json on disk).

    Raises:
        ConfigError: layers or widths out of bounds, an unknown activation or extractor.
    """
    arch = policy_kwargs.get("net_arch")
    if (
        not isinstance(arch, list)
        or len(arch) > 16
        or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 4096 for w in arch)
    ):
        raise ConfigError(
            f"net_arch must be a list of at most 16 layer widths in [1, 4096], got {arch!r}"
        )
    if policy_kwargs.get("activation") not in ACTIVATIONS:
        raise ConfigError(
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {policy_kwargs.get('activation')!r}"
        )
    out: dict[str, Any] = {
        "net_arch": list(policy_kwargs["net_arch"]),
        "activation_fn": ACTIVATIONS[policy_kwargs["activation"]],
    }
    extractor = policy_kwargs.get("extractor")
    if extractor is not None:
        if extractor.get("name") != "history":
            raise ConfigError(f"unknown features extractor {extractor.get('name')!r}")
        kwargs = {}
        for k, high in (
            ("d_model", 1024),
            ("head_dim", 1_000_000),
            ("n_tokens", 100_000),
            ("token_width", 100_000),
            ("present", 100_000),
        ):
            value = extractor.get(k)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                raise ConfigError(f"extractor.{k} must be an integer in [0, {high}], got {value!r}")
            kwargs[k] = value
        out["features_extractor_class"] = HistoryExtractor
        out["features_extractor_kwargs"] = kwargs
    return out


class HistoryExtractor(BaseFeaturesExtractor):
    """A set encoder over the trial history, as an SB3 features extractor.

    The observation is a head (task features, the parameter being chosen, the partial
    configuration, a summary) followed by ``n_tokens`` trial tokens of ``token_width`` (see
    :class:`~hporl.observation.ObservationLayout`, version 2). Each token goes through a shared
    MLP with a learned embedding of its slot (DeepSets with an index embedding); empty slots
    (``present`` flag 0) are masked out. The tokens are pooled three ways -- mean, max, and an
    attention whose query comes from the head (which trials matter for the parameter being
    chosen now) -- and concatenated with the encoded head. Cost is linear in the history.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        *,
        d_model: int,
        head_dim: int,
        n_tokens: int,
        token_width: int,
        present: int,
    ) -> None:
        if head_dim + n_tokens * token_width != observation_space.shape[0]:
            raise ConfigError(
                f"history extractor: {head_dim} + {n_tokens} x {token_width} does not match the "
                f"observation's {observation_space.shape[0]} values"
            )
        super().__init__(observation_space, features_dim=4 * d_model)
        self.head_dim, self.n_tokens, self.token_width = head_dim, n_tokens, token_width
        self.present = present
        self.head = nn.Sequential(nn.Linear(head_dim, d_model), nn.ReLU())
        self.token = nn.Linear(token_width, d_model)
        self.slot = nn.Embedding(max(n_tokens, 1), d_model)
        self.phi = nn.Sequential(nn.ReLU(), nn.Linear(d_model, d_model), nn.ReLU())
        self.query = nn.Linear(d_model, d_model)
        self.scale = d_model**-0.5

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.combine(obs, self.encode_tokens(obs))

    def encode_tokens(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The encoded trial tokens and their presence mask (``None`` without tokens). They do
        not change while one configuration is chosen, so a caller proposing one may encode them
        once and :meth:`combine` them with each step's observation."""
        if self.n_tokens == 0:
            return None
        tokens = obs[:, self.head_dim :].reshape(-1, self.n_tokens, self.token_width)
        present = tokens[:, :, self.present : self.present + 1] > 0.5  # [B, T, 1]
        h = self.phi(self.token(tokens) + self.slot.weight[None, : self.n_tokens])
        return h * present, present

    def combine(
        self, obs: torch.Tensor, encoded: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """The features of ``obs`` given its :meth:`encode_tokens`."""
        head = self.head(obs[:, : self.head_dim])
        if encoded is None:
            zeros = head.new_zeros(head.shape[0], 3 * head.shape[1])
            return torch.cat([head, zeros], dim=1)
        h, present = encoded
        count = present.sum(1).clamp(min=1)
        mean = h.sum(1) / count
        peak = h.masked_fill(~present, -1e4).amax(1) * present.any(1)
        attn = (h @ self.query(head)[:, :, None]) * self.scale  # [B, T, 1]
        weights = torch.softmax(attn.masked_fill(~present, -1e4), dim=1) * present
        pooled = (weights * h).sum(1)
        return torch.cat([head, mean, peak, pooled], dim=1)


def make_vec_env(env_fns: list[Callable[[], gym.Env]], wait: str = "round") -> VecEnv:
    """One env in process; several in a :class:`~hporl.vec_env.FanOutVecEnv`, whose envs
    share one evaluator and so train their configurations at once on its workers."""
    if len(env_fns) == 1:
        return DummyVecEnv(env_fns)
    from hporl.vec_env import FanOutVecEnv

    return FanOutVecEnv(env_fns, wait=wait)


def _layout_of(env: VecEnv) -> Any:
    """The observation layout of the envs (HPOEnv's), ``None`` for other envs."""
    try:
        return env.get_attr("layout", indices=[0])[0]
    except AttributeError:
        return None


def build_agent(
    config: AgentConfig, env: VecEnv, *, log_dir: str | Path | None = None
) -> BaseAlgorithm:
    """A fresh SB3 agent for ``env`` (logs as CSV, and TensorBoard when it is installed)."""
    cls = _algorithm_class(config.algorithm)
    kwargs = {**_DEFAULTS[config.algorithm], **config.params}
    try:
        agent = cls(
            "MlpPolicy",
            env,
            learning_rate=config.learning_rate,
            policy_kwargs=sb3_policy_kwargs(config.policy_kwargs(_layout_of(env))),
            seed=config.seed,
            device=config.device,
            verbose=0,
            **kwargs,
        )
    except (TypeError, ValueError, AssertionError) as err:  # SB3 checks its settings with asserts
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"agent {config.algorithm!r}: {first}") from None
    agent.set_logger(_logger(log_dir))
    return agent


def _logger(log_dir: str | Path | None) -> Any:
    """SB3's logger writing csv (and tensorboard, if installed) to ``log_dir``; with no
    ``log_dir``, one that writes nothing (SB3's own default makes a ``SB3-<time>`` folder in the
    system's temporary directory at every ``learn``)."""
    from stable_baselines3.common.logger import Logger, configure

    if log_dir is None:
        return Logger(folder=None, output_formats=[])

    formats = ["csv"]
    try:
        import tensorboard  # noqa: F401

        formats.append("tensorboard")
    except ImportError:
        pass
    return configure(str(log_dir), formats)


_STEPS = re.compile(r"_(\d+)_steps\.zip$")


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the most timesteps in ``folder`` (``agent_<n>_steps.zip``) that was
    saved completely (its ``.sha256`` sidecar exists), verified against that checksum.

    Raises:
        ConfigError: that checkpoint is truncated or altered (delete it to resume from the one
            before).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in folder.glob("*_steps.zip") if (m := _STEPS.search(p.name))),
        reverse=True,
    )
    for _, path in found:
        if not verify_checksum(path, error=ConfigError, missing_ok=True):
            logger.warning("skipping checkpoint %s: saved without a checksum (incomplete)", path)
            continue
        return path
    return None


# Entries SB3 pickles into a checkpoint, rebuilt here instead (None: SB3 rebuilds it itself when
# training continues: schedules from the plain learning rate, buffers, the last observation).
_REBUILT = {
    "_last_obs": None,
    "_last_episode_starts": None,
    "_last_original_obs": None,
    "ep_info_buffer": None,
    "ep_success_buffer": None,
    "rollout_buffer_class": None,
    "replay_buffer_class": None,
    "lr_schedule": None,
    "exploration_schedule": None,
}


def load_checkpoint(path: str | Path, config: AgentConfig, env: VecEnv) -> BaseAlgorithm:
    """Load an SB3 checkpoint without unpickling anything in it.

    SB3 stores some entries (policy class, spaces, schedules) with cloudpickle; each is given
    from ``config`` and ``env`` instead (SB3's ``custom_objects``), and a checkpoint holding a
    pickled entry hporl does not know is refused. Weights load with ``weights_only=True``.

    Raises:
        ConfigError: not a checkpoint of this algorithm, or one that does not fit ``config``.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{path} is not a readable agent checkpoint: {err}") from None
    params = {**_DEFAULTS[config.algorithm], **config.params}
    policy_kwargs = sb3_policy_kwargs(config.policy_kwargs(_layout_of(env)))
    if config.algorithm == "a2c" and params.get("use_rms_prop", True):  # as A2C's __init__ does
        policy_kwargs.setdefault("optimizer_class", torch.optim.RMSprop)
        policy_kwargs.setdefault(
            "optimizer_kwargs",
            {"alpha": 0.99, "eps": params.get("rms_prop_eps", 1e-5), "weight_decay": 0},
        )
    known = {
        **_REBUILT,
        "policy_class": policy_class(config.algorithm),
        "policy_kwargs": policy_kwargs,
        "observation_space": env.observation_space,
        "action_space": env.action_space,
        "clip_range": params.get("clip_range", 0.2),
        "clip_range_vf": params.get("clip_range_vf"),
        "train_freq": params.get("train_freq", 4),  # off-policy: converted again by SB3
    }
    pickled = [k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v]
    unknown = [k for k in pickled if k not in known]
    if unknown:
        raise ConfigError(
            f"{path} holds a pickled entry {unknown[0]!r} that hporl does not rebuild; "
            "refusing to unpickle it"
        )
    try:
        return _algorithm_class(config.algorithm).load(
            path, env=env, device=config.device, custom_objects={k: known[k] for k in pickled}
        )
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"{path} does not fit this experiment's agent ({config.algorithm}): {first}"
        ) from None


def save_checkpoint(agent: BaseAlgorithm, folder: Path) -> Path:
    """Save ``agent`` as ``folder/agent_<timesteps>_steps.zip``: to a temporary name, renamed,
    then its checksum sidecar (a checkpoint without one is never resumed from)."""
    path = folder / f"agent_{agent.num_timesteps}_steps.zip"
    buffer = io.BytesIO()  # in memory first: a full disk then fails as a plain OSError
    agent.save(buffer)
    atomic_write(path, lambda p: p.write_bytes(buffer.getbuffer()))
    write_checksum(path)
    return path


class _Checkpoints(BaseCallback):
    """Every ``every`` calls (each a step of all envs), :func:`save_checkpoint`."""

    def __init__(self, every: int, folder: Path) -> None:
        super().__init__()
        self.every = every
        self.folder = folder

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            save_checkpoint(self.model, self.folder)
        return True


def train_agent(
    config: AgentConfig,
    env_fns: list[Callable[[], gym.Env]],
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress_bar: bool = False,
    callback: Any = None,
    on_new_agent: Callable[[BaseAlgorithm], None] | None = None,
) -> BaseAlgorithm:
    """Train (or, with ``resume``, continue) an agent for ``config.total_timesteps`` in all.

    With ``run_dir``, checkpoints go to ``run_dir/checkpoints`` every ``checkpoint_every``
    timesteps and logs to ``run_dir/logs``; ``resume`` loads the latest checkpoint there and
    trains only the remaining timesteps.
    ``on_new_agent`` is called with a freshly built agent (not a
    resumed one) before it learns: a warm start such as behaviour cloning.
    """
    env = make_vec_env(env_fns, config.wait)
    callbacks = [callback] if callback is not None else []
    agent: BaseAlgorithm | None = None
    ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None
    if resume and ckpt_dir is not None and (path := latest_checkpoint(ckpt_dir)) is not None:
        agent = load_checkpoint(path, config, env)
        agent.set_logger(_logger(Path(run_dir) / "logs"))
        logger.info("resuming from %s at %d timesteps", path, agent.num_timesteps)
    if agent is None:
        agent = build_agent(
            config, env, log_dir=Path(run_dir) / "logs" if run_dir is not None else None
        )
        if on_new_agent is not None:
            on_new_agent(agent)
    if ckpt_dir is not None:
        callbacks.append(_Checkpoints(max(config.checkpoint_every // config.n_envs, 1), ckpt_dir))
    remaining = config.total_timesteps - agent.num_timesteps
    try:
        if remaining > 0:
            agent.learn(
                remaining,
                callback=callbacks or None,
                reset_num_timesteps=not resume or agent.num_timesteps == 0,
                progress_bar=progress_bar,
            )
        if ckpt_dir is not None:
            save_checkpoint(agent, ckpt_dir)
    finally:
        env.close()
    return agent

"""Warm start for meta-training: behaviour cloning of a transfer expert (an adaptive rule, or
a greedy portfolio).

A policy that must discover from scratch, with PPO, which configurations work across tasks tends
to lose to a static portfolio chosen on the training tasks (see ../shared/DESIGN.md). So before
RL, a meta-training run can:

1. draw ``n_candidates`` configurations on the policy's own action grid (every value a bin, so
   the policy can reproduce them exactly), the space's default among them;
2. evaluate every candidate on every training task with the run's backend and reward approach;
3. play an expert on each training task: by default the greedy portfolio, one list for every
   task (each next one minimises the training tasks' mean normalised regret of the
   best-so-far); or an adaptive rule (:func:`adaptive_orders`) that plays each training task as
   if it were unseen, weighing the *other* training tasks by feature similarity and by how well
   their scores match the trials seen so far. Offline on LCBench (4-fold and leave-one-out,
   a 4,000-config sample) the adaptive rule beat the portfolio at every K, but a policy cloned
   from it and trained with RL lost to one cloned from the portfolio on held-out tasks;
4. train the agent's network to reproduce the expert, trial after trial, on every training
   task, from the observation it would have had (cross-entropy on the masked action logits;
   the value head regresses the return-to-go).

RL then starts from the expert's level, with its task features and its history already read.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from hporl.agents import action_logits, state_values
from hporl.env import FIDELITY_DECISION, HPOEnv
from hporl.observation import trial_score
from hporl.space import config_key

__all__ = [
    "Portfolio",
    "PretrainConfig",
    "adaptive_orders",
    "behaviour_clone",
    "greedy_portfolio",
    "grid_candidates",
]

logger = logging.getLogger(__name__)


class PretrainConfig(BaseModel):
    """Settings of the behaviour-cloning warm start."""

    model_config = ConfigDict(extra="forbid")
    candidates: int = Field(
        32, ge=2, description="candidate configurations evaluated on every training task"
    )
    epochs: int = Field(
        300, ge=1, description="passes of supervised training over the expert steps"
    )
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    seed: int = 0
    anchor_trials: int = Field(
        0,
        ge=0,
        description="during RL, keep the policy's first N trials close to the portfolio (a BC loss "
        "on those steps after every rollout); later trials are free to adapt",
    )
    anchor_epochs: int = Field(1, ge=1)
    candidate_sampling: Literal["space", "snapped", "grid"] = Field(
        "space",
        description="snapped: the space's own random sample, as the transfer baselines draw it, "
        "each value moved to the nearest action bin (so every expert choice is played exactly); "
        "space: the sample unmoved, the portfolio's values joining the action bins; grid: "
        "uniformly random bins",
    )
    expert: Literal["portfolio", "adaptive", "halving"] = Field(
        "portfolio",
        description="what the warm start imitates: the greedy portfolio (one list for every "
        "task), or an adaptive transfer rule that weighs the other training tasks by their "
        "features and by how well their scores match the trials seen so far (see "
        "adaptive_orders; with candidate_sampling snapped, so that its many picks are played "
        "exactly). The portfolio is the default: after RL, the adaptive warm start lost to it on "
        "held-out LCBench tasks although the rule alone had won offline (README). halving "
        "(budget-aware layouts only): successive halving over the portfolio, cheap probes "
        "continued rung by rung (see halving_steps)",
    )
    bandwidth: float = Field(
        2.0, gt=0, description="adaptive expert: kernel width on standardised task features"
    )
    match: float = Field(
        4.0, ge=0, description="adaptive expert: weight of the score match with each training task"
    )
    match_after: int = Field(
        3, ge=2, description="adaptive expert: trials seen before scores reweigh the tasks"
    )


def grid_candidates(
    env: HPOEnv, n: int, rng: np.random.Generator, *, sampling: str = "grid"
) -> list[dict[str, Any]]:
    """``n`` distinct configurations on the env's action grid, the space's default (snapped to
    the grid) first. ``sampling="space"`` snaps ``space.sample(rng)`` draws (the distribution the
    transfer baselines use, log-uniform where ``log``); ``"grid"`` draws bins uniformly."""
    layout = env.layout
    space = env.space
    seen: set[str] = set()
    out: list[dict[str, Any]] = []

    def add(config: dict[str, Any]) -> None:
        key = config_key(config)
        if key not in seen:
            seen.add(key)
            out.append(config)

    default = space.default()
    add(_snap(env, default))
    for _ in range(50 * n):
        if len(out) >= n:
            break
        if sampling == "space":
            add(_snap(env, space.sample(rng)))
            continue
        partial: dict[str, Any] = {}
        position = layout.advance(partial, 0)
        while position is not None:
            mask = layout.mask(position)
            partial[space.parameters[position].name] = layout.value_of(
                position, int(rng.choice(np.flatnonzero(mask)))
            )
            position = layout.advance(partial, position + 1)
        add(space.validate(partial))
    return out


def _snap(env: HPOEnv, config: dict[str, Any]) -> dict[str, Any]:
    layout, space = env.layout, env.space
    partial: dict[str, Any] = {}
    position = layout.advance(partial, 0)
    while position is not None:
        name = space.parameters[position].name
        partial[name] = layout.value_of(position, layout.action_of(name, config[name]))
        position = layout.advance(partial, position + 1)
    return space.validate(partial)


def _regret(values: np.ndarray) -> np.ndarray:
    """Per-task normalised regret of each candidate over the candidates' range."""
    lo = values.min(axis=1, keepdims=True)
    hi = values.max(axis=1, keepdims=True)
    return (hi - values) / np.maximum(hi - lo, 1e-12)


def adaptive_orders(
    values: np.ndarray,
    features: np.ndarray,
    k: int,
    *,
    bandwidth: float = 2.0,
    match: float = 4.0,
    min_seen: int = 3,
) -> list[list[int]]:
    """What an adaptive transfer rule picks on each training task when that task is unseen.

    On task ``t``, the other tasks are weighted by a Gaussian kernel on their standardised
    features (``bandwidth``) and, once ``min_seen`` trials are in, by how well their scores on the tried
    candidates match ``t``'s (both z-scored; weight ``exp(-match * mean squared difference)``).
    Each next candidate minimises the weighted mean of the other tasks' regret of the best so
    far (a greedy portfolio step, reweighted). Only scores ``t`` would have observed are used.
    """
    regret = _regret(values)
    n_tasks, n_cand = regret.shape
    f = np.asarray(features, dtype=np.float64).reshape(n_tasks, -1)
    f = (f - f.mean(0)) / np.maximum(f.std(0), 1e-9)
    out: list[list[int]] = []
    for t in range(n_tasks):
        others = [i for i in range(n_tasks) if i != t] or [t]
        r = regret[others]
        prior = np.exp(-((f[others] - f[t]) ** 2).sum(1) / (2 * bandwidth**2))
        best = np.full(len(others), np.inf)
        tried: list[int] = []
        seen: list[float] = []
        for _ in range(min(k, n_cand)):
            w = prior.copy()
            if len(tried) >= max(min_seen, 2) and match > 0:
                mine = np.asarray(seen)
                mine = (mine - mine.mean()) / max(mine.std(), 1e-9)
                theirs = r[:, tried]
                theirs = (theirs - theirs.mean(1, keepdims=True)) / np.maximum(
                    theirs.std(1, keepdims=True), 1e-9
                )
                w = w * np.exp(-match * ((theirs - mine) ** 2).mean(1))
            w = w / max(w.sum(), 1e-300)
            score = (np.minimum(best[:, None], r) * w[:, None]).sum(0)
            score[tried] = np.inf
            c = int(np.argmin(score))
            tried.append(c)
            seen.append(regret[t, c])
            best = np.minimum(best, r[:, c])
        out.append(tried)
    return out


def greedy_portfolio(values: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` candidates chosen greedily to minimise the mean normalised regret of the
    best-so-far over tasks. ``values[t, c]`` is candidate ``c``'s value on task ``t`` (higher is
    better); regret on a task is normalised by that task's range over the candidates."""
    regret = np.ascontiguousarray(_regret(values).T)  # [c, t]: each mean sums as one row
    chosen: list[int] = []
    best = np.full(values.shape[0], np.inf)
    for _ in range(min(k, values.shape[1])):
        scores = np.minimum(regret, best).mean(axis=1)
        scores[chosen] = np.inf
        c = int(np.argmin(scores))
        chosen.append(c)
        best = np.minimum(best, regret[c])
    return chosen


@dataclass
class Portfolio:
    """The candidates, their values on the training tasks, and the greedy order."""

    candidates: list[dict[str, Any]]
    values: np.ndarray
    order: list[int]
    per_task: list[list[int]] | None = None
    """With the adaptive expert: the candidates it picks on each training task, in order."""

    @property
    def configs(self) -> list[dict[str, Any]]:
        return [self.candidates[i] for i in self.order]

    def order_for(self, t: int) -> list[int]:
        """The expert's candidates on training task ``t``."""
        return self.per_task[t] if self.per_task is not None else self.order

    def mean_regret(self) -> list[float]:
        """Mean normalised regret over the training tasks after 1..K expert trials."""
        regret = _regret(self.values)
        k = len(self.order)
        return [
            float(
                np.mean([regret[t, self.order_for(t)[: i + 1]].min() for t in range(len(regret))])
            )
            for i in range(k)
        ]


CandidateValues = Callable[[Any, list[dict[str, Any]]], np.ndarray]
"""``values(task, configs)``: the reward-approach values of many configurations on a task at
once (a benchmark with a batched surrogate supplies one; otherwise each is evaluated)."""


def build_portfolio(
    env: HPOEnv,
    tasks: list[Any],
    config: PretrainConfig,
    *,
    values_fn: CandidateValues | None = None,
    progress: Callable[[int], None] | None = None,
) -> Portfolio:
    """Evaluate the candidates on every task, all of a task's at once (through the env's
    evaluator: cached there, and on its workers together); ``progress(tasks_done)`` after each."""
    rng = np.random.default_rng(config.seed)
    if config.candidate_sampling == "space":
        # The transfer baselines' own draws, kept exact: the meta-training run adds the chosen
        # ones' values to the action bins (ObservationLayout.extra_bins), so the policy plays them.
        candidates = [env.space.sample(rng) for _ in range(config.candidates)]
    elif config.candidate_sampling == "snapped":
        # The same draws moved to the nearest bins (duplicates kept: indices stay aligned with
        # the transfer baselines' sample).
        candidates = [_snap(env, env.space.sample(rng)) for _ in range(config.candidates)]
    else:
        candidates = grid_candidates(env, config.candidates, rng)
    scored = candidates
    approach = env.reward_approach
    values = np.zeros((len(tasks), len(candidates)))
    for t, task in enumerate(tasks):
        if values_fn is not None:
            values[t] = values_fn(task, scored)
        else:
            reference = env.reference(task)
            results = env.evaluator.evaluate_many(
                task, scored, seed=env.trial_seed, epochs=env.epochs
            )
            for c, result in enumerate(results):
                values[t, c] = approach(result, reference=reference, task=task)
        if progress is not None:
            progress(t + 1)
    order = greedy_portfolio(values, env.layout.budget)
    per_task = None
    if config.expert == "adaptive":
        features = np.stack([np.asarray(t.features(), dtype=np.float64).reshape(-1) for t in tasks])
        per_task = adaptive_orders(
            values,
            features,
            env.layout.budget,
            bandwidth=config.bandwidth,
            match=config.match,
            min_seen=config.match_after,
        )
    return Portfolio(candidates, values, order, per_task)


def expert_steps(env: HPOEnv, tasks: list[Any], portfolio: Portfolio) -> dict[str, np.ndarray]:
    """Observations, masks, actions and returns-to-go of the portfolio played on every task."""
    layout = env.layout
    obs, masks, actions, returns, trial_index = [], [], [], [], []
    for t, task in enumerate(tasks):
        features = layout.features_block(task.features())
        trials: list[tuple[dict[str, Any], float | None]] = []
        order = portfolio.order_for(t)
        values = [portfolio.values[t, i] for i in order]
        best_so_far = np.maximum.accumulate(values)
        episode_return = best_so_far[-1]
        # Budget-aware: the portfolio at full fidelity, each trial a full-training equivalent,
        # its reward the best so far over the budget (the env's anytime reward).
        aware = layout.budget_aware
        to_go = np.cumsum(best_so_far[::-1])[::-1] / layout.budget
        for k, config in enumerate(portfolio.candidates[i] for i in order):
            spent = k / layout.budget
            o, m, a = layout.replay(features, layout.trials_block(trials, spent), config)
            already = best_so_far[k - 1] if k > 0 else 0.0
            obs += o
            masks += m
            actions += a
            returns += [to_go[k] if aware else episode_return - already] * len(a)
            trial_index += [k] * len(a)
            score = trial_score(env.evaluate(task, config))
            trials.append((config, score, 1.0) if aware else (config, score))
    return {
        "obs": np.stack(obs).astype(np.float32),
        "masks": np.stack(masks),
        "actions": np.array(actions, dtype=np.int64),
        "returns": np.array(returns, dtype=np.float32),
        "trial": np.array(trial_index, dtype=np.int64),
    }


HALVING_ETA = 3
"""Successive halving's rate in the ``halving`` expert: of each fidelity's probes, one in three
goes on to the next."""


def _samples(space: Any, *, seed: int) -> Iterator[dict[str, Any]]:
    """Configurations sampled from ``space``, endlessly."""
    rng = np.random.default_rng(seed)
    while True:
        yield space.sample(rng)


def halving_steps(env: HPOEnv, tasks: list[Any], portfolio: Portfolio) -> dict[str, np.ndarray]:
    """The ``halving`` expert (budget-aware layouts): successive halving over the portfolio,
    played in ``env`` itself on every training task. The first trial is the portfolio's first
    at full fidelity (what transfer says is best on average); then brackets: the next
    ``eta^(L-1)`` portfolio configurations at the lowest fidelity, the best continued rung by
    rung (``eta^(L-1-i)`` continuations from fidelity ``i``) to full. When a decision does not
    fit in the epochs left, the next that does is taken (a continuation first, then new
    configurations from the cheapest fidelity). Once the portfolio's configurations are all
    tried, new ones are sampled from the space (seeded by the task's place). Returns-to-go are
    the env's own rewards summed from each step on."""
    layout = env.layout
    levels = len(layout.fidelities)
    # Ordered only as far as an episode can reach (every new trial at the lowest fidelity):
    # ordering all of a 10,000-candidate sample greedily took hours.
    reach = layout.budget * math.ceil(1 / layout.fidelities[0]) + 1
    order = greedy_portfolio(portfolio.values, min(len(portfolio.candidates), reach))
    bracket = [("new", 0)] * HALVING_ETA ** (levels - 1)
    for i in range(levels - 1):
        bracket += [("continue", i)] * HALVING_ETA ** (levels - 2 - i)
    if levels == 1:
        bracket = [("new", 0)]
    obs, masks, actions, rewards, trial_index, episode = [], [], [], [], [], []
    for t, task in enumerate(tasks):
        env.reset(options={"task": task})
        plan = itertools.chain([("new", levels - 1)], itertools.cycle(bracket))
        queue = itertools.chain(
            (portfolio.candidates[c] for c in order), _samples(env.space, seed=t)
        )
        config: dict[str, Any] = {}
        trials, done = 0, False
        while not done:
            mask = env.action_masks()
            choosing = env.choosing
            if choosing == FIDELITY_DECISION:
                wanted = next(plan)
                allowed = [layout.decisions[a] for a in np.flatnonzero(mask)]
                if wanted not in allowed:
                    wanted = next(
                        (d for d in allowed if d[0] == "continue"),
                        min(allowed, key=lambda d: d[1]),
                    )
                action = layout.decisions.index(wanted)
                if wanted[0] == "new":
                    config = next(queue)
            else:
                name = choosing
                action = layout.action_of(name, config.get(name, env.space[name].default))
            obs.append(env.observe())
            masks.append(mask)
            actions.append(action)
            trial_index.append(trials)
            episode.append(t)
            _, reward, done, _, info = env.step(action)
            rewards.append(reward)
            trials += 1 if "config" in info else 0
    returns = np.zeros(len(rewards), dtype=np.float32)
    to_go = 0.0
    for i in range(len(rewards) - 1, -1, -1):
        if i == len(rewards) - 1 or episode[i] != episode[i + 1]:
            to_go = 0.0
        to_go += rewards[i]
        returns[i] = to_go
    return {
        "obs": np.stack(obs).astype(np.float32),
        "masks": np.stack(masks),
        "actions": np.array(actions, dtype=np.int64),
        "returns": returns,
        "trial": np.array(trial_index, dtype=np.int64),
    }


def behaviour_clone(
    agent: Any, algorithm: str, data: dict[str, np.ndarray], config: PretrainConfig
) -> dict[str, float]:
    """Fit the agent's network to the expert steps; returns the final loss and action accuracy."""
    policy = agent.policy
    policy.set_training_mode(True)
    device = policy.device
    obs = torch.as_tensor(data["obs"], device=device)
    masks = torch.as_tensor(data["masks"], device=device)
    actions = torch.as_tensor(data["actions"], device=device)
    returns = torch.as_tensor(data["returns"], device=device)
    opt = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    gen = torch.Generator().manual_seed(config.seed)
    n = len(actions)
    batch = 256
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch):
            idx = perm[s : s + batch].to(device)
            logits = action_logits(policy, algorithm, obs[idx])
            values = state_values(policy, algorithm, obs[idx])
            logits = logits.masked_fill(~masks[idx], -1e9)
            loss = torch.nn.functional.cross_entropy(logits, actions[idx])
            if values is not None:
                loss = loss + 0.5 * torch.nn.functional.mse_loss(values, returns[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    policy.set_training_mode(False)
    with torch.no_grad():
        logits = action_logits(policy, algorithm, obs)
        acc = (logits.masked_fill(~masks, -1e9).argmax(1) == actions).float().mean().item()
    if algorithm == "dqn":
        agent.q_net_target.load_state_dict(agent.q_net.state_dict())
    return {"loss": float(loss.item()), "action_accuracy": acc, "steps": n}


def anchored(data: dict[str, np.ndarray], n_trials: int) -> dict[str, np.ndarray] | None:
    """The expert steps of the first ``n_trials`` trials (``None`` when there are none)."""
    keep = data["trial"] < n_trials
    if not keep.any():
        return None
    return {k: v[keep] for k, v in data.items()}


def anchor_callback(holder: dict[str, Any], algorithm: str, config: PretrainConfig) -> Any:
    """An SB3 callback that, after each policy update, takes ``anchor_epochs`` behaviour-cloning passes
    over ``holder["anchor"]`` (set by the warm start), so RL refines later trials without
    forgetting the portfolio's opening."""
    from stable_baselines3.common.callbacks import BaseCallback

    settings = config.model_copy(update={"epochs": config.anchor_epochs})

    class _Anchor(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _anchor(self) -> None:
            data = holder.get("anchor")
            if data is not None:
                behaviour_clone(self.model, algorithm, data, settings)

        # After each update (the next rollout's start) and after the last one.
        def _on_rollout_start(self) -> None:
            self._anchor()

        def _on_training_end(self) -> None:
            self._anchor()

    return _Anchor()

"""A vectorised :class:`~hporl.env.HPOEnv` whose trainings run on an executor's workers.

SB3 steps the ``n_envs`` environments of a VecEnv in lockstep. Choosing a parameter value takes
microseconds; finishing a configuration means training it. :class:`FanOutVecEnv` keeps the
environments in this process and sends only the trainings out: each step takes every env's
action (:meth:`HPOEnv.propose`), gathers the evaluations the finished configurations need,
runs the distinct ones at once on an :class:`~hporl.executors.Executor` (a local process pool or
Ray), then completes each env's step (:meth:`HPOEnv.finish`). So:

- trainings scale with the workers (a local pool, or a Ray cluster's CPUs), and the task data
  goes to the workers once;
- two envs that finish the same configuration on the same task in one step train it once, and
  the envs share one evaluation cache;
- with a :class:`~hporl.store.StoredBackend`, this process is the store's only writer: workers
  train, the store is looked up before and written after, here.

A training whose worker died is retried once (its result then counts); other failures are
results like any other (the reward approach scores them).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from hporl.backends._base import Backend, TrialResult
from hporl.env import HPOEnv
from hporl.exceptions import ConfigError
from hporl.executors import WORKER_DIED, Executor, make_executor
from hporl.store import StoredBackend

__all__ = ["FanOutVecEnv"]

logger = logging.getLogger(__name__)


class FanOutVecEnv(DummyVecEnv):
    """``n`` HPOEnvs in this process whose evaluations run together on ``executor``.

    Args:
        env_fns: functions building the environments (HPOEnvs sharing one backend).
        executor: ``"local"`` (a pool of spawned processes; in process with one worker),
            ``"ray"``, or an :class:`~hporl.executors.Executor`.
        n_workers: workers of an executor named here (default: one per env).
        ray_address: the Ray cluster to join (default ``RAY_ADDRESS``, else a local Ray).

    Counts: ``n_trained`` (trainings run on the workers), ``n_shared`` (evaluations that
    another env asked for in the same step, run once), ``n_retried`` (trainings rerun after
    their worker died).
    """

    def __init__(
        self,
        env_fns: list[Callable[[], HPOEnv]],
        executor: str | Executor = "local",
        *,
        n_workers: int | None = None,
        ray_address: str | None = None,
    ) -> None:
        super().__init__(env_fns)
        hpo = [env.unwrapped for env in self.envs]
        if not all(isinstance(env, HPOEnv) for env in hpo):
            raise ConfigError("FanOutVecEnv steps HPOEnv environments only")
        self.hpo: list[HPOEnv] = hpo
        backends = {id(env.backend) for env in hpo}
        if len(backends) != 1:
            raise ConfigError("the environments of a FanOutVecEnv must share one backend")
        shared = hpo[0]._cache
        for env in hpo[1:]:  # one cache: what one env learnt, no other env trains again
            if env._cache is not None and shared is not None:
                env._cache = shared
        backend = hpo[0].backend
        self.stored = backend if isinstance(backend, StoredBackend) else None
        self.inner: Backend = self.stored.backend if self.stored is not None else backend
        self.executor = make_executor(executor, n_workers or len(env_fns), ray_address=ray_address)
        tasks: list[Any] = []
        for env in hpo:
            tasks.extend(t for t in env._tasks if all(t is not u for u in tasks))
        try:
            # Tasks drawn by a sampler (none listed) are shipped when first evaluated.
            self.executor.start(self.inner, *tasks)
        except BaseException:
            self.executor.close()
            raise
        self.n_trained = 0
        self.n_shared = 0
        self.n_retried = 0

    def step_wait(self) -> Any:
        configs = [env.propose(a) for env, a in zip(self.hpo, self.actions, strict=True)]
        wanted: dict[tuple, tuple[Any, dict]] = {}
        for env, config in zip(self.hpo, configs, strict=True):
            if config is None:
                continue
            for key, task, c in env.requests(config):
                if key in wanted:
                    self.n_shared += 1
                wanted.setdefault(key, (task, c))
        results = self._evaluate(wanted) if wanted else {}
        for i, (env, config) in enumerate(zip(self.hpo, configs, strict=True)):
            if config is None:
                obs, self.buf_rews[i], terminated, truncated, self.buf_infos[i] = (
                    env.observe(),
                    0.0,
                    False,
                    False,
                    {},
                )
            else:
                obs, self.buf_rews[i], terminated, truncated, self.buf_infos[i] = env.finish(
                    config, results
                )
            self.buf_dones[i] = terminated or truncated
            self.buf_infos[i]["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                self.buf_infos[i]["terminal_observation"] = obs
                obs, self.reset_infos[i] = self.envs[i].reset()
            self._save_obs(i, obs)
        return (
            self._obs_from_buf(),
            np.copy(self.buf_rews),
            np.copy(self.buf_dones),
            [dict(info) for info in self.buf_infos],
        )

    def _evaluate(self, wanted: dict[tuple, tuple[Any, dict]]) -> dict[tuple, TrialResult]:
        """Every wanted evaluation: from the store, or trained on the workers all at once."""
        env = self.hpo[0]
        seed, epochs = env.trial_seed, env.epochs
        results: dict[tuple, TrialResult] = {}
        futures: dict[tuple, cf.Future] = {}
        for key, (task, config) in wanted.items():
            hit = (
                self.stored.cached(task, config, seed=seed, epochs=epochs)
                if self.stored is not None
                else None
            )
            if hit is not None:
                results[key] = hit
            else:
                futures[key] = self.executor.submit(config, seed=seed, epochs=epochs, task=task)
        for key, future in futures.items():
            task, config = wanted[key]
            result = future.result()
            if _worker_died(result):
                logger.warning("%s; training %s on %s again", result.reason, config, task.name)
                self.n_retried += 1
                result = self.executor.submit(config, seed=seed, epochs=epochs, task=task).result()
            self.n_trained += 1
            if self.stored is not None:
                self.stored.keep(task, config, result, seed=seed, epochs=epochs)
            results[key] = result
        return results

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.executor.close()


def _worker_died(result: TrialResult) -> bool:
    return result.status == "failed" and (result.reason or "").startswith(WORKER_DIED)

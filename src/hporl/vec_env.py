"""A vectorised :class:`~hporl.env.HPOEnv` whose trainings run on an executor's workers.

SB3 steps the ``n_envs`` environments of a VecEnv in lockstep. Choosing a parameter value takes
microseconds; finishing a configuration means training it. :class:`FanOutVecEnv` keeps the
environments in this process and sends only the trainings out, in rounds:

- every env chooses its next configuration, one value per step; when an env has chosen all
  of it (:meth:`HPOEnv.propose`), its trainings (:meth:`HPOEnv.requests`) start at once on
  an :class:`~hporl.executors.Executor` (a local process pool, or Ray) and the env waits:
  its steps are forced ones (one allowed action, reward 0, the same observation) until
- the last env has chosen: that step waits for every training of the round, and finishes
  each env's trial with its result (:meth:`HPOEnv.finish`), all on the same step.

So the trainings of a round run at the same time whatever the lengths of the configurations
(a conditional parameter makes some shorter), and a waiting env costs only the steps another
env still needs to choose. Moreover:

- the task data goes to the workers once;
- two envs that choose the same configuration on the same task in one round train it once,
  and the envs share one evaluation cache;
- with a :class:`~hporl.store.StoredBackend`, this process is the store's only writer:
  workers train, the store is looked up before and written after, here.

A training whose worker died is retried once (its result then counts); other failures are
results like any other (the reward approach scores them). With one env, a round is a trial:
the env never waits.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from hporl.backends._base import Backend, TrialResult
from hporl.env import HPOEnv
from hporl.exceptions import ConfigError
from hporl.executors import Executor, make_executor, worker_died
from hporl.store import StoredBackend

__all__ = ["WAITS", "FanOutVecEnv"]

logger = logging.getLogger(__name__)


WAITS = ("round", "own")


@dataclass
class _Evaluation:
    task: Any
    config: dict
    future: cf.Future
    trained: bool  # on a worker (else served by the store)
    retried: bool = False


class FanOutVecEnv(DummyVecEnv):
    """``n`` HPOEnvs in this process whose trainings run together on ``executor``.

    Args:
        env_fns: functions building the environments (HPOEnvs sharing one backend).
        executor: ``"local"`` (a pool of spawned processes; in process with one worker),
            ``"ray"``, or an :class:`~hporl.executors.Executor`.
        n_workers: workers of an executor named here (default: one per env).
        ray_address: the Ray cluster to join (default ``RAY_ADDRESS``, else a local Ray).
        wait: ``"round"``: an env that has chosen waits until every env has, and all their
            trials end on one step when the round's trainings are done; ``"own"``: an env waits
            for its own trainings only, and the others go on choosing (a step blocks only when
            every env waits, until one's trainings are done).

    Counts: ``n_trained`` (trainings run on the workers), ``n_shared`` (evaluations another
    env had already asked for, run once), ``n_retried`` (trainings rerun after their worker
    died), ``n_waits`` (forced steps of waiting envs).
    """

    def __init__(
        self,
        env_fns: list[Callable[[], HPOEnv]],
        executor: str | Executor = "local",
        *,
        n_workers: int | None = None,
        ray_address: str | None = None,
        wait: str = "round",
    ) -> None:
        if wait not in WAITS:
            raise ConfigError(f"wait must be one of {', '.join(WAITS)}, got {wait!r}")
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
        self.wait = wait
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
        self.n_waits = 0
        # The envs that have chosen, with the evaluations their trials need; those under way,
        # and those done that a waiting env still needs.
        self._waiting: dict[int, list[tuple]] = {}
        self._inflight: dict[tuple, _Evaluation] = {}
        self._results: dict[tuple, TrialResult] = {}

    def reset(self) -> Any:
        self._waiting, self._inflight, self._results = {}, {}, {}
        return super().reset()

    def step_wait(self) -> Any:
        for i, (env, action) in enumerate(zip(self.hpo, self.actions, strict=True)):
            if i in self._waiting:  # a waiting env's action is a forced one
                self.n_waits += 1
                continue
            if env.propose(action) is not None:
                requests = env.requests()
                self._start(requests)
                self._waiting[i] = [key for key, _, _ in requests]
        ready = self._ready()
        for i, env in enumerate(self.hpo):
            if i in ready:
                del self._waiting[i]
                outcome = env.finish(self._results)
            else:
                outcome = env.observe(), 0.0, False, False, {}
            obs, self.buf_rews[i], terminated, truncated, self.buf_infos[i] = outcome
            self.buf_dones[i] = terminated or truncated
            self.buf_infos[i]["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                self.buf_infos[i]["terminal_observation"] = obs
                obs, self.reset_infos[i] = self.envs[i].reset()
            self._save_obs(i, obs)
        if ready:
            needed = {key for keys in self._waiting.values() for key in keys}
            self._results = {k: v for k, v in self._results.items() if k in needed}
        return (
            self._obs_from_buf(),
            np.copy(self.buf_rews),
            np.copy(self.buf_dones),
            [dict(info) for info in self.buf_infos],
        )

    def _ready(self) -> list[int]:
        """The waiting envs whose trials end on this step; blocks while no env could move."""
        while True:
            self._harvest()
            if self.wait == "round":
                if len(self._waiting) < self.num_envs:
                    return []
                if not self._inflight:
                    return list(self._waiting)
            else:
                ready = [
                    i
                    for i, keys in self._waiting.items()
                    if all(key in self._results for key in keys)
                ]
                if ready or len(self._waiting) < self.num_envs:
                    return ready
            futures = [ev.future for ev in self._inflight.values()]
            cf.wait(futures, return_when=cf.FIRST_COMPLETED)

    def _start(self, requests: list[tuple[tuple, Any, dict]]) -> None:
        """Start the evaluations of a chosen configuration: from the store, or training."""
        env = self.hpo[0]
        for key, task, config in requests:
            if key in self._inflight or key in self._results:  # another env asked for it
                self.n_shared += 1
                continue
            hit = (
                self.stored.cached(task, config, seed=env.trial_seed, epochs=env.epochs)
                if self.stored is not None
                else None
            )
            if hit is not None:
                future: cf.Future = cf.Future()
                future.set_result(hit)
                self._inflight[key] = _Evaluation(task, config, future, trained=False)
            else:
                future = self.executor.submit(
                    config, seed=env.trial_seed, epochs=env.epochs, task=task
                )
                self._inflight[key] = _Evaluation(task, config, future, trained=True)

    def _harvest(self) -> None:
        """Take in the evaluations that are done (recorded in the store as they come); a
        training whose worker died goes again, once."""
        env = self.hpo[0]
        seed, epochs = env.trial_seed, env.epochs
        for key, ev in list(self._inflight.items()):
            if not ev.future.done():
                continue
            result = ev.future.result()
            if ev.trained and worker_died(result) and not ev.retried:
                logger.warning(
                    "%s; training %s on %s again", result.reason, ev.config, ev.task.name
                )
                self.n_retried += 1
                ev.retried = True
                ev.future = self.executor.submit(ev.config, seed=seed, epochs=epochs, task=ev.task)
                continue
            if ev.trained:
                self.n_trained += 1
                if self.stored is not None:
                    self.stored.keep(ev.task, ev.config, result, seed=seed, epochs=epochs)
            self._results[key] = result
            del self._inflight[key]

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.executor.close()

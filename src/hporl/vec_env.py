"""A vectorised :class:`~hporl.env.HPOEnv` whose trainings run together on its evaluator's workers.

SB3 steps the ``n_envs`` environments of a VecEnv in lockstep. Choosing a parameter value takes
microseconds; finishing a configuration means training it. :class:`FanOutVecEnv` keeps the
environments in this process and lets their shared :class:`~hporl.evaluation.Evaluator` run the
trainings (on a local process pool, or Ray), in rounds:

- every env chooses its next configuration, one value per step; when an env has chosen all
  of it (:meth:`HPOEnv.propose`), its evaluations start at once (:meth:`HPOEnv.submit`) and
  the env waits: its steps are forced ones (one allowed action, reward 0, the same
  observation) until
- the last env has chosen: that step waits for every training of the round, and finishes
  each env's trial with its result (:meth:`HPOEnv.finish`), all on the same step.

So the trainings of a round run at the same time whatever the lengths of the configurations
(a conditional parameter makes some shorter), and a waiting env costs only the steps another
env still needs to choose. The evaluator ships the task data to the workers once, trains an
evaluation that two envs ask for once, serves what its cache or store holds, keeps this process
the store's only writer, and runs a training whose worker died once more. With one env, a round
is a trial: the env never waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from hporl.env import HPOEnv
from hporl.evaluation import FIRST_COMPLETED, Evaluation, Evaluator
from hporl.exceptions import ConfigError

__all__ = ["WAITS", "FanOutVecEnv"]

logger = logging.getLogger(__name__)


WAITS = ("round", "own")


class FanOutVecEnv(DummyVecEnv):
    """``n`` HPOEnvs in this process whose trainings run together on their shared evaluator.

    Args:
        env_fns: functions building the environments (HPOEnvs sharing one
            :class:`~hporl.evaluation.Evaluator`, which says where trainings run).
        wait: ``"round"``: an env that has chosen waits until every env has, and all their
            trials end on one step when the round's trainings are done; ``"own"``: an env waits
            for its own trainings only, and the others go on choosing (a step blocks only when
            every env waits, until one's trainings are done).

    Counts: ``n_waits`` (forced steps of waiting envs); the evaluator counts trainings,
    shared and retried evaluations.
    """

    def __init__(self, env_fns: list[Callable[[], HPOEnv]], *, wait: str = "round") -> None:
        if wait not in WAITS:
            raise ConfigError(f"wait must be one of {', '.join(WAITS)}, got {wait!r}")
        super().__init__(env_fns)
        hpo = [env.unwrapped for env in self.envs]
        if not all(isinstance(env, HPOEnv) for env in hpo):
            raise ConfigError("FanOutVecEnv steps HPOEnv environments only")
        self.hpo: list[HPOEnv] = hpo
        if len({id(env.evaluator) for env in hpo}) != 1:
            raise ConfigError("the environments of a FanOutVecEnv must share one Evaluator")
        self.evaluator: Evaluator = hpo[0].evaluator
        self.wait = wait
        for env in hpo:  # the task data goes to the workers once, when they start
            self.evaluator.start(*env.tasks)
        self.n_waits = 0
        self._waiting: dict[int, list[Evaluation]] = {}  # envs that have chosen

    def reset(self) -> Any:
        self._waiting = {}
        return super().reset()

    def step_wait(self) -> Any:
        for i, (env, action) in enumerate(zip(self.hpo, self.actions, strict=True)):
            if i in self._waiting:  # a waiting env's action is a forced one
                self.n_waits += 1
                continue
            if env.propose(action) is not None:
                self._waiting[i] = env.submit()
        ready = self._ready()
        for i, env in enumerate(self.hpo):
            if i in ready:
                del self._waiting[i]
                outcome = env.finish()
            else:
                outcome = env.observe(), 0.0, False, False, {}
            obs, self.buf_rews[i], terminated, truncated, self.buf_infos[i] = outcome
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

    def _ready(self) -> list[int]:
        """The waiting envs whose trials end on this step; blocks while no env could move."""
        if len(self._waiting) < self.num_envs and self.wait == "round":
            self.evaluator.poll()  # take in what is done (store writes)
            return []
        while True:
            pending = [e for evs in self._waiting.values() for e in evs if not e.done()]
            if self.wait == "round":
                self.evaluator.wait(pending)
                return list(self._waiting)
            self.evaluator.poll()
            ready = [i for i, evs in self._waiting.items() if all(e.done() for e in evs)]
            if ready or len(self._waiting) < self.num_envs:
                return ready
            self.evaluator.wait(pending, return_when=FIRST_COMPLETED)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.evaluator.close()

"""Where evaluations run: in this process, in a local process pool, or on a Ray cluster.

An :class:`Executor` runs ``Backend.evaluate`` for one task and many configurations; the task
(its tensors and model definitions) is shipped to the workers once, not with every trial.
``submit`` returns a :class:`concurrent.futures.Future` of the :class:`~hporl.backends.TrialResult`;
a trial whose worker dies or that exceeds its time limit comes back as a ``"failed"`` result
with the reason (never an exception), so the caller can record it and retry it.

- ``local`` (default): ``n_workers=1`` evaluates in the calling process; more use a pool of
  spawned processes, each given the task once when it starts.
- ``ray`` (``pip install 'hporl[ray]'``): an existing cluster (``address=`` or ``RAY_ADDRESS``), or
  a local Ray started for the run and shut down after. The task goes into Ray's object store
  once.

The time limit is kept at two levels: the backend stops a trial at the end of the epoch in
which its limit passes (``reason`` says so); a worker that does not come back within twice the
limit is cancelled (Ray) and the trial failed.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from hporl.backends._base import Backend, EpochCallback, TrialResult
from hporl.exceptions import ConfigError

__all__ = [
    "EXECUTORS",
    "WORKER_DIED",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
    "worker_died",
]

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
WORKER_DIED = "worker died"
"""How the reason of a trial whose worker died starts (such a trial is retried)."""


def worker_died(result: TrialResult) -> bool:
    """Whether ``result`` is a trial whose worker died (to be run again, not scored)."""
    return result.status == "failed" and str(result.reason or "").startswith(WORKER_DIED)


def _checked_workers(n_workers: Any) -> int:
    if not isinstance(n_workers, int) or n_workers < 1:
        raise ConfigError(f"n_workers must be a positive integer, got {n_workers!r}")
    return n_workers


def _time_limited(
    backend: Backend,
    task: Any,
    config: Mapping[str, Any],
    seed: int,
    time_limit: float | None,
    epochs: int | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrialResult:
    """``backend.evaluate`` that stops at the end of the epoch in which ``time_limit`` passes,
    or where ``on_epoch`` (e.g. a pruner) says so."""
    if not time_limit:
        if on_epoch is None:
            return backend.evaluate(task, config, seed=seed, epochs=epochs)
        return backend.evaluate(task, config, seed=seed, epochs=epochs, on_epoch=on_epoch)
    start = time.perf_counter()
    timed_out = False

    def over(epoch: int, value: float) -> bool:
        nonlocal timed_out
        if on_epoch is not None and on_epoch(epoch, value):
            return True
        timed_out = time.perf_counter() - start > time_limit
        return timed_out

    result = backend.evaluate(task, config, seed=seed, epochs=epochs, on_epoch=over)
    if result.stopped_early and timed_out:
        result.reason = f"time limit of {time_limit:g} s reached after {result.epochs_done} epochs"
    return result


def failed(metric_name: str, reason: str, config: Mapping[str, Any], seed: int) -> TrialResult:
    return TrialResult(
        status="failed", metric_name=metric_name, reason=reason, config=dict(config), seed=seed
    )


class Executor(abc.ABC):
    """Evaluates configurations on ``n_workers`` workers (see the module docstring)."""

    name = "executor"
    n_workers = 1

    @property
    def in_process(self) -> bool:
        """Whether evaluations run in the calling process, so that :meth:`submit` takes an
        ``on_epoch`` callback (a pruner reading every epoch as it is trained)."""
        return False

    @abc.abstractmethod
    def start(self, backend: Backend, *tasks: Any) -> None:
        """Ship ``backend`` and ``tasks`` to the workers (once); the first is the default task
        of :meth:`submit`."""

    @property
    @abc.abstractmethod
    def started(self) -> bool:
        """Whether :meth:`start` was called (and :meth:`close` not since)."""

    @abc.abstractmethod
    def submit(
        self,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        time_limit: float | None = None,
        epochs: int | None = None,
        task: Any = None,
        on_epoch: EpochCallback | None = None,
    ) -> cf.Future:
        """Start one evaluation of ``config`` on ``task`` (default: the first started); the
        future's result is its TrialResult (never an exception). A task not given to
        :meth:`start` is shipped with this evaluation (by Ray: once, then reused).

        ``on_epoch(epoch, value)`` is called after each epoch; ``True`` stops the evaluation
        there. Only an executor :attr:`in_process` takes it (others raise ``ValueError``).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the workers (and a Ray started for this run)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """In this process (``n_workers=1``) or in a pool of spawned processes."""

    name = "local"

    def __init__(self, n_workers: int = 1) -> None:
        self.n_workers = _checked_workers(n_workers)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._backend: Backend | None = None
        self._tasks: list[Any] = []
        self._index: dict[int, int] = {}
        self._payload = b""

    @property
    def started(self) -> bool:
        return self._backend is not None

    @property
    def in_process(self) -> bool:
        return self.n_workers == 1

    def start(self, backend: Backend, *tasks: Any) -> None:
        self._backend, self._tasks = backend, list(tasks)
        self._index = {id(t): i for i, t in enumerate(self._tasks)}
        if self.n_workers > 1:
            import cloudpickle

            self._payload = cloudpickle.dumps((backend, self._tasks))
            self._pool = self._new_pool()
            # Every worker starts now (each imports torch and unpacks the tasks once), all at
            # the same time and while the caller goes on; evaluations queue behind.
            for _ in range(self.n_workers):
                self._pool.submit(_warm, 0.05)

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.n_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._payload,),
        )

    def submit(
        self,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        time_limit: float | None = None,
        epochs: int | None = None,
        task: Any = None,
        on_epoch: EpochCallback | None = None,
    ) -> cf.Future:
        if self._backend is None:
            raise RuntimeError("call start(backend, task) first")
        task = _default_task(task, self._tasks[:1])
        if self._pool is None:
            future: cf.Future = cf.Future()
            future.set_result(
                _time_limited(self._backend, task, config, seed, time_limit, epochs, on_epoch)
            )
            return future
        if on_epoch is not None:
            raise ValueError("on_epoch needs evaluations in this process (n_workers=1)")
        # A started task goes by its index; another one travels with the call.
        which = self._index.get(id(task), task)
        args = (_pool_evaluate, which, dict(config), seed, time_limit, epochs)
        try:
            inner = self._pool.submit(*args)
        except BrokenProcessPool:  # a worker died: its trials failed; start afresh
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            inner = self._pool.submit(*args)
        return _guarded(inner, task.metric_name, config, seed)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._backend = None


def _default_task(task: Any, started: list[Any]) -> Any:
    if task is not None:
        return task
    if not started:
        raise ValueError("no task given, and none was given to start()")
    return started[0]


_WORKER: dict[str, Any] = {}


def _init_worker(payload: bytes) -> None:
    import cloudpickle
    import torch

    torch.set_num_threads(1)
    _WORKER["backend"], _WORKER["tasks"] = cloudpickle.loads(payload)


def _warm(seconds: float) -> int:
    """Hold a worker for ``seconds``, so that the pool starts another for the next call."""
    time.sleep(seconds)
    return os.getpid()


def _pool_evaluate(
    task: Any, config: dict[str, Any], seed: int, time_limit: float | None, epochs: int | None
) -> TrialResult:
    task = _WORKER["tasks"][task] if isinstance(task, int) else task
    return _time_limited(_WORKER["backend"], task, config, seed, time_limit, epochs)


def _guarded(
    inner: cf.Future,
    metric_name: str,
    config: Mapping[str, Any],
    seed: int,
) -> cf.Future:
    """A future whose worker dying gives a failed result (the broken pool is replaced at the
    next submit)."""
    outer: cf.Future = cf.Future()

    def done(f: cf.Future) -> None:
        try:
            outer.set_result(f.result())
        except Exception as err:  # BrokenProcessPool: the worker died mid-trial
            outer.set_result(failed(metric_name, f"{WORKER_DIED}: {err!r}", config, seed))

    inner.add_done_callback(done)
    return outer


class RayExecutor(Executor):
    """Evaluations as Ray tasks; the task data in Ray's object store once. Nothing starts
    before :meth:`start`, so an executor can be described first and handed over.

    Args:
        n_workers: trials at once (and CPUs of a Ray started here).
        address: an existing cluster (``ray.init(address=...)``); default ``RAY_ADDRESS``, else a
            local Ray started for this run (temporary files under ``temp_dir``) and shut down by
            :meth:`close`.
    """

    name = "ray"

    def __init__(
        self,
        n_workers: int = 2,
        *,
        address: str | None = None,
        temp_dir: str | None = None,
        cpus_per_trial: float = 1.0,
    ) -> None:
        self._ray = _import_ray()
        self.n_workers = _checked_workers(n_workers)
        self.cpus_per_trial = cpus_per_trial
        self.address = address
        self._ray_temp_dir = temp_dir
        self._started, self._temp_dir = False, None
        self._remote: Any = None
        self._task_refs: dict[int, tuple[Any, Any]] = {}  # id(task) -> (task, its object ref)
        self._default: list[Any] = []
        self._backend_ref = None
        self._watch: dict[Any, tuple[cf.Future, float | None, float, Mapping, int, str]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False

    @property
    def started(self) -> bool:
        return self._backend_ref is not None

    def start(self, backend: Backend, *tasks: Any) -> None:
        """Join the cluster (or start a local Ray), then put the backend and tasks in its object
        store."""
        ray = self._ray
        if self._remote is None:
            self._started, self._temp_dir = _ray_init(
                ray,
                self.address,
                num_cpus=max(int(self.n_workers * self.cpus_per_trial), 1),
                temp_dir=self._ray_temp_dir,
            )
            self._remote = ray.remote(num_cpus=self.cpus_per_trial, max_retries=0)(_ray_evaluate)
        self._backend_ref = ray.put(backend)
        for task in tasks:
            self._task_ref(task)
        self._default = list(tasks[:1])

    def _task_ref(self, task: Any) -> Any:
        """The object-store ref of ``task``, put there on first use."""
        held = self._task_refs.get(id(task))
        if held is None:
            held = self._task_refs[id(task)] = (task, self._ray.put(task))
        return held[1]

    def submit(
        self,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        time_limit: float | None = None,
        epochs: int | None = None,
        task: Any = None,
        on_epoch: EpochCallback | None = None,
    ) -> cf.Future:
        if self._backend_ref is None:
            raise RuntimeError("call start(backend, task) first")
        if on_epoch is not None:
            raise ValueError("on_epoch needs evaluations in this process; Ray runs them elsewhere")
        task = _default_task(task, self._default)
        ref = self._remote.remote(
            self._backend_ref, self._task_ref(task), dict(config), seed, time_limit, epochs
        )
        future: cf.Future = cf.Future()
        with self._lock:
            self._watch[ref] = (
                future,
                time_limit,
                time.monotonic(),
                dict(config),
                seed,
                task.metric_name,
            )
        if self._thread is None:
            self._thread = threading.Thread(target=self._collect, daemon=True)
            self._thread.start()
        return future

    def _collect(self) -> None:
        """Hand results to futures as they arrive; fail crashed and overdue trials."""
        ray = self._ray
        while not self._closing:
            with self._lock:
                refs = list(self._watch)
            if not refs:
                time.sleep(0.01)
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.2)
            for ref in ready:
                with self._lock:
                    future, _, _, config, seed, metric = self._watch.pop(ref)
                try:
                    future.set_result(ray.get(ref))
                except Exception as err:  # the worker died, or the task was cancelled
                    reason = (
                        f"{WORKER_DIED}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    )
                    future.set_result(failed(metric, reason, config, seed))
            now = time.monotonic()
            with self._lock:
                overdue = [
                    (ref, v) for ref, v in self._watch.items() if v[1] and now - v[2] > 2 * v[1] + 5
                ]
            for ref, (future, limit, _, config, seed, metric) in overdue:
                ray.cancel(ref, force=True)
                with self._lock:
                    self._watch.pop(ref, None)
                future.set_result(
                    failed(metric, f"time limit of {limit:g} s: worker cancelled", config, seed)
                )

    def close(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        _ray_shutdown(self._ray, self._started, self._temp_dir)
        self._started, self._temp_dir, self._remote = False, None, None
        self._backend_ref = None


def _ray_init(
    ray: Any, address: str | None, *, num_cpus: int, temp_dir: str | None
) -> tuple[bool, str | None]:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray with ``num_cpus``.
    Returns whether this call started it, and the temporary directory it made for it."""
    if ray.is_initialized():
        return False, None
    address = address or os.environ.get("RAY_ADDRESS") or None
    made = None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        made = None if temp_dir else tempfile.mkdtemp(prefix="hporl-ray-")
        kwargs.update(num_cpus=num_cpus, _temp_dir=temp_dir or made)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(**kwargs)
    except Exception as err:  # an address nothing answers at, a bad temp dir
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        where = f"at {address!r}" if address else "locally"
        raise ConfigError(f"cannot start or reach Ray {where}: {first}") from None
    return True, made


def _ray_shutdown(ray: Any, started: bool, temp_dir: str | None) -> None:
    if started and ray.is_initialized():
        ray.shutdown()
    if temp_dir is not None:
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'hporl[ray]'") from None
    return ray


def _ray_evaluate(
    backend: Backend,
    task: Any,
    config: dict[str, Any],
    seed: int,
    time_limit: float | None,
    epochs: int | None,
) -> TrialResult:
    import torch

    torch.set_num_threads(1)
    return _time_limited(backend, task, config, seed, time_limit, epochs)


def make_executor(
    executor: str | Executor = "local",
    n_workers: int = 1,
    *,
    ray_address: str | None = None,
    temp_dir: str | None = None,
) -> Executor:
    """An executor by name (``local`` or ``ray``), or the one given."""
    if isinstance(executor, Executor):
        return executor
    if executor == "local":
        return LocalExecutor(n_workers)
    if executor == "ray":
        return RayExecutor(n_workers, address=ray_address, temp_dir=temp_dir)
    raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")

"""The trial store: every real evaluation kept as an optuna trial, and the cache in front of training.

A :class:`TrialStore` wraps one optuna storage: a SQLite file by default (nothing to start), or
any SQLAlchemy URL optuna accepts (PostgreSQL when several machines share work). Evaluations are
grouped in one optuna study per (run, task), named ``<run>/<task>``; each trial holds

- the configuration as optuna params with their distributions (so ``optuna-dashboard`` and
  optuna's own tools read it),
- the :class:`~hporl.backends.TrialResult` as user attributes: ``hporl_result`` (everything),
  and flat ``status``, ``reason``, ``wall_time``, ``seed``, ``epochs``, ``hporl_version`` for
  reading at a glance; the validation curve as intermediate values,
- the state: COMPLETE (value = best validation metric), PRUNED (stopped early: by a pruner,
  with the user attribute ``pruned_epoch`` and the curve up to it, value = its last epoch's;
  or by a time limit) or FAIL (diverged or failed; the reason is kept).

The store is also the cache: :meth:`TrialStore.lookup` finds a finished trial with the same task
fingerprint, configuration, seed and epochs in any study of the store, so nothing is trained
twice (a trial stopped by a pruner is no such evaluation: it is never a hit). :class:`hporl.evaluation.Evaluator` puts that in front of every evaluation.

Trials whose process died are failed and retried once: on the same host at once (the owning
process is gone), elsewhere by optuna's heartbeat after its grace period.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from hporl.backends._base import TrialResult
from hporl.exceptions import StoreError
from hporl.space import SearchSpace, config_key

__all__ = [
    "DATABASE_ERRORS",
    "PRUNED_EPOCH",
    "TASK_FEATURES",
    "TrialStore",
    "evaluation_key",
    "mask_url",
    "storage_url",
    "trial_state",
]

logger = logging.getLogger(__name__)

RESULT = "hporl_result"
KEY = "hporl_key"
WORKER = "hporl_worker"
OWNER = "hporl_owner"
CONFIGURING = "hporl_configuring"
"""True while a claimed trial's parameters are being suggested one by one (``study.ask``): a
trial whose process died then never trained, and is failed without a retry."""
TASK_FEATURES = "hporl_features"
"""The study user attribute holding its task's meta-features (``Task.features()``)."""
PRUNED_EPOCH = "pruned_epoch"
"""The user attribute of a trial stopped by a pruner: the last epoch it trained."""
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
REFRESH_SECONDS = 1.0
"""How often :meth:`TrialStore.lookup` re-reads the store for results of other processes."""

DATABASE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def evaluation_key(
    fingerprint: str,
    config: Mapping[str, Any],
    seed: int,
    epochs: int,
    horizon: int | None = None,
) -> str:
    """What identifies an evaluation: task fingerprint, configuration, seed and epochs, and the
    epochs of the training it is the start of, if any (:meth:`Backend.horizon
    <hporl.backends.Backend.horizon>`: a curve different from a whole shorter training's)."""
    parts: list[Any] = [fingerprint, config_key(config), int(seed), int(epochs)]
    if horizon is not None and int(horizon) != int(epochs):
        parts.append(int(horizon))
    text = json.dumps(parts)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def mask_url(url: str | None) -> str:
    """``url`` with its password replaced by ``***`` (for messages and reports)."""
    if not url:
        return "memory"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing secret to hide
        return url


def storage_url(storage: str | Path | None, run_dir: str | Path | None) -> str | None:
    """The storage URL a run uses: ``storage`` as given (a URL, or a path to a SQLite file),
    else ``<run_dir>/trials.db``, else ``None`` (in memory)."""
    if storage is None:
        return None if run_dir is None else _sqlite_url(Path(run_dir) / "trials.db")
    storage = str(storage)
    if "://" in storage:
        return storage
    return _sqlite_url(Path(storage))


def _sqlite_url(path: Path) -> str:
    path = path.expanduser()
    if path.is_dir():
        raise StoreError(
            f"storage {str(path)!r} is a directory; give a SQLite file in it (e.g. "
            f"{str(path / 'trials.db')!r}) or a database URL"
        )
    return f"sqlite:///{path.resolve()}"


def _first_line(err: BaseException) -> str:
    """The first line of the driver's own message under optuna's and SQLAlchemy's wrappers."""
    seen = 0
    while seen < 20 and (err.__cause__ is not None or getattr(err, "orig", None) is not None):
        err = getattr(err, "orig", None) or err.__cause__
        seen += 1
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class TrialStore:
    """One optuna storage holding hporl's trials (see the module docstring).

    Args:
        url: a SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://user@host/db``), a
            path to a SQLite file, or ``None`` for an in-memory store (nothing kept).
        heartbeat_interval: seconds between heartbeats of a running trial (optuna's); a trial
            whose heartbeat stops for ``grace_period`` (default twice the interval) is failed
            and retried once by the next process that runs a study of this store.
        max_retry: how many times a trial whose process died is run again.

    Raises:
        StoreError: the storage cannot be opened (driver missing, server unreachable, a file
            that is not a database, a directory without write permission).
    """

    def __init__(
        self,
        url: str | Path | None = None,
        *,
        heartbeat_interval: int = 10,
        grace_period: int | None = None,
        max_retry: int = 1,
    ) -> None:
        self.url = storage_url(url, None) if url is not None else None
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_retry = max_retry
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.storage: BaseStorage = self._open()
        self.hits = 0
        self.misses = 0
        self._index: dict[str, TrialResult] = {}
        self._indexed: dict[int, set[int]] = {}  # study id -> trial ids already in the index
        self._refreshed: dict[str, float] = {}  # task fingerprint -> when last re-read

    # -- opening ----------------------------------------------------------------------------
    def _open(self) -> BaseStorage:
        if self.url is None:
            return optuna.storages.InMemoryStorage()
        masked = mask_url(self.url)
        is_sqlite = self.url.startswith("sqlite")
        if is_sqlite:
            self._check_sqlite_file()
            engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 300}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
        last: BaseException | None = None
        for attempt in range(5):  # several processes may create the same new database at once
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    warnings.simplefilter("ignore", FutureWarning)
                    rdb = RDBStorage(
                        self.url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=self.heartbeat_interval,
                        grace_period=self.grace_period,
                        heartbeat_stale_trial_callback=self.retry,
                    )
                if is_sqlite:
                    _sqlite_concurrency(rdb)
                return optuna.storages.get_storage(rdb)  # optuna's caching layer in front
            except ImportError:
                raise StoreError(
                    f"storage {masked!r}: its database driver is not installed "
                    "(PostgreSQL: pip install 'hporl[postgres]')"
                ) from None
            except Exception as err:
                last = err
                text = _first_line(err).lower()
                racing = ("locked", "already exists", "duplicate key", "unique constraint")
                if any(r in text for r in racing):  # another process is creating the tables
                    time.sleep(0.2 * (attempt + 1))
                    continue
                break
        raise StoreError(f"storage {masked!r} cannot be used: {_first_line(last)}") from None

    def _check_sqlite_file(self) -> None:
        path = Path(self.url.split(":///", 1)[-1]) if ":///" in self.url else None
        if path is None or str(path) in ("", ":memory:"):
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"cannot create the directory for the trial store {str(path)!r}: {err.strerror}"
            ) from None
        if path.exists():
            if not os.access(path, os.R_OK | os.W_OK):
                raise StoreError(f"trial store {str(path)!r} is not readable and writable")
            with path.open("rb") as f:
                head = f.read(16)
            if head and head != b"SQLite format 3\x00":
                raise StoreError(f"{str(path)!r} is not a SQLite database; nothing was changed")
        elif not os.access(path.parent, os.W_OK):
            raise StoreError(f"directory {str(path.parent)!r} is not writable (trial store)")

    def __getstate__(self) -> dict[str, Any]:  # for subprocess environments: reopen there
        return {
            "url": self.url,
            "heartbeat_interval": self.heartbeat_interval,
            "grace_period": self.grace_period,
            "max_retry": self.max_retry,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("url"), **state)

    # -- studies ----------------------------------------------------------------------------
    def study(
        self,
        run: str,
        task: Any,
        *,
        sampler: optuna.samplers.BaseSampler | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
        name: str | None = None,
    ) -> optuna.Study:
        """The study of ``run`` on ``task`` (created on first use), direction maximize.

        Its user attributes name the task, its fingerprint and the hporl version, and for a
        :class:`~hporl.tasks.Task` its meta-features (``hporl_features``, named by
        ``hporl_feature_names``) with its type, metric, chance metric and epoch budget, so a
        surrogate can be fitted on the store later (:mod:`hporl.backends.surrogate`). A study
        made before those were kept gets them the next time it is opened with its task.
        """
        from hporl import __version__

        name = name or f"{run}/{task.name}"
        try:
            study = optuna.create_study(
                storage=self.storage,
                study_name=name,
                direction="maximize",
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
            if study.user_attrs.get("hporl_fingerprint") is None:
                study.set_user_attr("hporl_task", task.name)
                study.set_user_attr("hporl_fingerprint", _fingerprint(task))
                study.set_user_attr("hporl_run", run)
                study.set_user_attr("hporl_version", __version__)
            if TASK_FEATURES not in study.user_attrs and study.user_attrs.get(
                "hporl_fingerprint"
            ) == _fingerprint(task):
                for key, value in _task_description(task).items():
                    study.set_user_attr(key, value)
        except optuna.exceptions.StorageInternalError as err:
            raise StoreError(
                f"storage {mask_url(self.url)!r}: cannot open study {name!r}: {_first_line(err)}"
            ) from None
        return study

    # -- the cache --------------------------------------------------------------------------
    def lookup(
        self,
        task: Any,
        config: Mapping[str, Any],
        *,
        seed: int,
        epochs: int | None = None,
        horizon: int | None = None,
    ) -> TrialResult | None:
        """A finished evaluation of ``config`` on ``task`` (same fingerprint, seed, epochs and
        horizon, see :func:`evaluation_key`) anywhere in the store, or ``None``. A hit comes
        back with ``cached=True``."""
        fingerprint = _fingerprint(task)
        if fingerprint is None:
            return None
        key = evaluation_key(fingerprint, config, seed, epochs or task.epochs, horizon)
        if key not in self._index:
            # Re-read the store at most once a second: a tune run asks for every new
            # configuration (each a miss), and re-reading its growing study each time made a
            # trial's cost grow with the trials. This process's own records are indexed as they
            # are written; another process's, within a second.
            now = time.monotonic()
            if now - self._refreshed.get(fingerprint, -math.inf) >= REFRESH_SECONDS:
                self._refresh(fingerprint)
                self._refreshed[fingerprint] = now
        found = self._index.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        result = TrialResult.from_dict(found.to_dict())
        result.cached = True
        return result

    def _refresh(self, fingerprint: str) -> None:
        """Index the finished trials of every study of this task not indexed yet."""
        studies = self._retrying(self.storage.get_all_studies, "cannot be read")
        for s in studies:
            if s.user_attrs.get("hporl_fingerprint") != fingerprint:
                continue
            seen = self._indexed.setdefault(s._study_id, set())
            trials = self._retrying(
                lambda s=s: self.storage.get_all_trials(
                    s._study_id, deepcopy=False, states=FINISHED
                ),
                "cannot be read",
            )
            new = len(trials) - len(seen)
            for t in reversed(trials):  # the newest first: one trial each time in a tune run
                if new <= 0:
                    break
                if t._trial_id in seen:
                    continue
                seen.add(t._trial_id)
                self._remember(t)
                new -= 1

    def _retrying(self, call: Any, what: str, attempts: int = 5) -> Any:
        """``call()``, tried again after a short wait when the database fails it (several
        processes writing one SQLite file can still meet a transient error); the last failure
        is a StoreError naming the database's own message. Each call is one transaction, so a
        failed one left nothing behind."""
        for attempt in range(attempts):
            try:
                return call()
            except DATABASE_ERRORS as err:
                lasting = any(word in _first_line(err).lower() for word in _LASTING)
                if attempt == attempts - 1 or lasting:  # a full disk stays full: no retries
                    raise StoreError(
                        f"storage {mask_url(self.url)!r} {what}: {_first_line(err)}"
                    ) from None
                logger.warning("storage: %s; trying again", _first_line(err))
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Database errors in the middle of a run (server gone, disk full) as a StoreError;
        what was stored before stays. The error may sit in the chain of another one: optuna
        can raise an AssertionError of its own while handling it."""
        try:
            yield
        except Exception as err:
            cause: BaseException | None = err
            for _ in range(20):
                if cause is None or isinstance(cause, DATABASE_ERRORS):
                    break
                cause = cause.__cause__ or cause.__context__
            if not isinstance(cause, DATABASE_ERRORS):
                raise
            raise StoreError(
                f"storage {mask_url(self.url)!r} failed during the run: {_first_line(cause)}; "
                "the trials finished before are kept"
            ) from None

    def _remember(self, t: FrozenTrial) -> None:
        key, data = t.user_attrs.get(KEY), t.user_attrs.get(RESULT)
        if key and data and key not in self._index:
            with contextlib.suppress(TypeError, ValueError):
                self._index[key] = TrialResult.from_dict(data)

    # -- writing ----------------------------------------------------------------------------
    def attributes(
        self,
        task: Any,
        config: Mapping[str, Any],
        result: TrialResult,
        *,
        seed: int,
        epochs: int | None,
        worker: str | None = None,
        pruned_epoch: int | None = None,
        horizon: int | None = None,
    ) -> dict[str, Any]:
        """The user attributes of a trial holding ``result``; one stopped by a pruner after
        ``pruned_epoch`` gets no cache key (its result is not the full evaluation's).
        ``horizon``: the epochs of the training it is the start of (see
        :func:`evaluation_key`)."""
        from hporl import __version__

        fingerprint = _fingerprint(task)
        epochs = int(epochs or task.epochs)
        attrs = {
            RESULT: result.to_dict(),
            "status": result.status,
            "reason": result.reason,
            "wall_time": round(result.wall_time, 4),
            "seed": int(seed),
            "epochs": epochs,
            "cached": result.cached,
            "hporl_version": __version__,
            "hporl_config": dict(config),
        }
        if horizon is not None and int(horizon) != epochs:
            attrs["horizon"] = int(horizon)
        if pruned_epoch is not None:
            attrs[PRUNED_EPOCH] = int(pruned_epoch)
        elif fingerprint is not None:
            attrs[KEY] = evaluation_key(fingerprint, config, seed, epochs, horizon)
        if worker is not None:
            attrs[WORKER] = worker
        return attrs

    def record(
        self,
        study: optuna.Study,
        task: Any,
        config: Mapping[str, Any],
        result: TrialResult,
        *,
        seed: int,
        epochs: int | None = None,
        space: SearchSpace | None = None,
        worker: str | None = None,
        horizon: int | None = None,
    ) -> None:
        """Add a finished trial holding ``result`` to ``study`` (for evaluations that did not
        run as an optuna trial, e.g. in meta-training)."""
        params, distributions = _params(space, config)
        attrs = self.attributes(
            task, config, result, seed=seed, epochs=epochs, worker=worker, horizon=horizon
        )
        state, value = trial_state(result)
        trial = optuna.trial.create_trial(
            state=state,
            value=value,
            params=params,
            distributions=distributions,
            user_attrs=attrs,
            intermediate_values=dict(enumerate(result.curve, start=1)),
        )
        self._retrying(lambda: study.add_trial(trial), "cannot record a trial")
        if KEY in attrs and attrs[KEY] not in self._index:
            self._index[attrs[KEY]] = TrialResult.from_dict(result.to_dict())

    def annotate(
        self,
        trial: optuna.Trial,
        task: Any,
        config: Mapping[str, Any],
        result: TrialResult,
        *,
        seed: int,
        epochs: int | None = None,
        worker: str | None = None,
        pruned_epoch: int | None = None,
        horizon: int | None = None,
    ) -> None:
        """Write ``result`` into a running ``trial`` (its attributes and curve); the caller then
        finishes it (``study.tell`` or by returning from the objective). ``pruned_epoch``: the
        epoch a pruner stopped it at, ``horizon``: see :meth:`attributes`."""
        attrs = self.attributes(
            task,
            config,
            result,
            seed=seed,
            epochs=epochs,
            worker=worker,
            pruned_epoch=pruned_epoch,
            horizon=horizon,
        )
        if not self._write_at_once(trial._trial_id, attrs, result.curve):
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            reported = trial.study._storage.get_trial(trial._trial_id).intermediate_values
            for step, value in enumerate(result.curve, start=1):
                if step not in reported:  # a pruner's trial reported each epoch already
                    trial.report(value, step)
        if KEY in attrs and attrs[KEY] not in self._index:
            self._index[attrs[KEY]] = TrialResult.from_dict(result.to_dict())

    def _write_at_once(self, trial_id: int, attrs: Mapping[str, Any], curve: list[float]) -> bool:
        """The attributes and the curve of a running trial in one transaction of an RDB
        storage, with optuna's own row models: a commit for each of the ~30 rows was the
        driver's bottleneck with many workers. ``False`` for other storages (the caller then
        writes row by row through optuna's API)."""
        rdb = getattr(self.storage, "_backend", None)
        if not isinstance(rdb, RDBStorage):
            return False
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session
        except ImportError:  # another optuna layout: row by row
            return False
        Attr, Step = models.TrialUserAttributeModel, models.TrialIntermediateValueModel

        def write() -> None:
            with _create_scoped_session(rdb.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                rdb.check_trial_is_updatable(trial_id, trial.state)
                have = {a.key: a for a in session.query(Attr).filter(Attr.trial_id == trial_id)}
                for key, value in attrs.items():
                    if key in have:
                        have[key].value_json = json.dumps(value)
                    else:
                        session.add(Attr(trial_id=trial_id, key=key, value_json=json.dumps(value)))
                steps = {v.step: v for v in session.query(Step).filter(Step.trial_id == trial_id)}
                for step, value in enumerate(curve, start=1):
                    stored, kind = Step.intermediate_value_to_stored_repr(float(value))
                    if step in steps:
                        steps[step].intermediate_value = stored
                        steps[step].intermediate_value_type = kind
                    else:
                        session.add(
                            Step(
                                trial_id=trial_id,
                                step=step,
                                intermediate_value=stored,
                                intermediate_value_type=kind,
                            )
                        )

        self._retrying(write, "cannot record a trial")
        return True

    def open_trial(
        self, study: optuna.Study, space: SearchSpace, config: Mapping[str, Any]
    ) -> optuna.Trial:
        """A RUNNING trial of ``study`` that holds ``config`` as its params and is claimed by
        this process (:meth:`claim`), made in one transaction (``study.ask``, a suggestion per
        parameter and the claim take ~15). ``space.suggest`` on it reads ``config`` back and
        writes nothing."""
        params = space.optuna_params(config)  # SearchSpaceError when it is not in the space
        distributions = space.to_optuna()
        template = FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.datetime.now(),
            datetime_complete=None,
            params=params,
            distributions={k: distributions[k] for k in params},
            user_attrs={OWNER: _owner()},
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
        storage = study._storage
        trial_id = self._retrying(
            lambda: storage.create_new_trial(study._study_id, template_trial=template),
            "cannot start a trial",
        )
        return optuna.trial.Trial(study, trial_id)

    # -- resume -----------------------------------------------------------------------------
    @staticmethod
    def claim(trial: optuna.Trial, *, configuring: bool = False) -> None:
        """Mark ``trial`` as run by this process (host and pid), so that if the process dies
        the next run on this host fails and retries it at once. ``configuring``: its parameters
        are still to be suggested; call :meth:`configured` once they all are (a trial that dies
        before is failed and not retried: its parameters are incomplete, and nothing trained)."""
        trial.set_user_attr(OWNER, _owner())
        if configuring:
            trial.set_user_attr(CONFIGURING, True)

    @staticmethod
    def configured(trial: optuna.Trial) -> None:
        """``trial``'s parameters are all suggested (see :meth:`claim`)."""
        trial.set_user_attr(CONFIGURING, False)

    def fail_orphans(self, study: optuna.Study, *, retry: bool = True) -> list[int]:
        """Fail the RUNNING trials of ``study`` whose process is gone (on this host; trials of
        other hosts wait for optuna's heartbeat), and with ``retry`` queue each again once
        (else see :meth:`queue_retries`). Returns their numbers. A trial whose process died
        after its result was written, before it was told, is finished from that result instead
        (run again, it would be served from the store and counted twice)."""
        host = socket.gethostname()
        failed = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(t.user_attrs.get(OWNER, ""))
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            if RESULT in t.user_attrs:
                state, value = trial_state(TrialResult.from_dict(t.user_attrs[RESULT]))
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    study._storage.set_trial_state_values(
                        t._trial_id, state=state, values=None if value is None else [value]
                    )
                    logger.warning(
                        "trial %d: its process died after recording its result; finished", t.number
                    )
                continue
            unconfigured = t.user_attrs.get(CONFIGURING) is True
            try:
                if unconfigured:  # not a trial of the run: no retry, no place in its history
                    study._storage.set_trial_user_attr(t._trial_id, "hporl_stale", True)
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
            if unconfigured:
                logger.warning(
                    "trial %d: its process died while its parameters were chosen (nothing "
                    "trained): failed, not retried",
                    t.number,
                )
                continue
            logger.warning("trial %d was running in a process that died: failed, retried", t.number)
            failed.append(t.number)
            if retry:
                self.queue_retries(study, [t.number])
        return failed

    def queue_retries(self, study: optuna.Study, numbers: list[int]) -> None:
        """Queue a retry (WAITING, ``study.ask`` takes it first) of each FAIL trial in
        ``numbers``, within ``max_retry``. Queue only what a run will take: nothing else runs a
        WAITING trial, so one queued past a run's last trial would wait for ever."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number in numbers:
                self.retry(study, study._storage.get_trial(t._trial_id))

    def results(self, study: optuna.Study) -> list[tuple[FrozenTrial, TrialResult]]:
        """The finished trials of ``study`` that hold an hporl result, oldest first."""
        out = []
        for t in study.get_trials(deepcopy=False, states=FINISHED):
            if RESULT in t.user_attrs:
                out.append((t, TrialResult.from_dict(t.user_attrs[RESULT])))
        return out


# -- helpers -----------------------------------------------------------------------------------
_LASTING = ("disk is full", "no space left", "readonly database", "disk i/o error")
"""Database errors that waiting does not mend (their message holds one of these)."""


def _owner() -> str:
    """Who runs a trial: this host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _fingerprint(task: Any) -> str | None:
    fingerprint = getattr(task, "fingerprint", None)
    return fingerprint if isinstance(fingerprint, str) else None


def _task_description(task: Any) -> dict[str, Any]:
    """What a surrogate needs to know of a real task's study: its meta-features and their
    names, its type, metric, chance metric and epoch budget (empty for other tasks)."""
    from hporl.tasks import FEATURE_NAMES, Task

    if not isinstance(task, Task):
        return {}
    try:
        features = [float(v) for v in task.features()]
    except Exception as err:  # features are optional for recording: never fail a run for them
        logger.warning("task %s: meta-features not recorded (%s)", task.name, err)
        return {}
    return {
        TASK_FEATURES: features,
        "hporl_feature_names": list(FEATURE_NAMES),
        "hporl_task_type": task.task_type,
        "hporl_metric": task.metric_name,
        "hporl_chance_metric": float(task.chance_metric),
        "hporl_task_epochs": int(task.epochs),
    }


def trial_state(result: TrialResult) -> tuple[TrialState, float | None]:
    """The optuna state (and value) of a trial holding ``result``: COMPLETE with the best
    validation metric, PRUNED when stopped early, else FAIL."""
    if result.ok and result.best_metric is not None:
        if result.stopped_early:
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, float(result.best_metric)
    return TrialState.FAIL, None


def _params(
    space: SearchSpace | None, config: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config`` as optuna params with distributions; empty when it does not fit ``space``."""
    if space is None:
        return {}, {}
    try:
        params = space.optuna_params(config)
    except Exception:  # a configuration from outside the space: kept in hporl_config only
        return {}, {}
    distributions = space.to_optuna()
    return params, {k: distributions[k] for k in params}


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is dead for our purpose.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nState:\tZ" in status:
            return False
    return True


def _sqlite_concurrency(rdb: RDBStorage) -> None:
    """SQLite shared by several processes: write-ahead logging (readers never block the
    writer), and every transaction takes the write lock at its start, so a busy database is
    waited for (up to the connect timeout) instead of failing with "database is locked"."""
    from sqlalchemy import event

    engine = rdb.engine

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN off: ours below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 300000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash of the process loses nothing
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners existed

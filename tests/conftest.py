from __future__ import annotations

import copy
import os

import pytest
import torch

from hporl import SearchSpace
from hporl.agents import AgentConfig, train_agent
from hporl.backends import SyntheticTask
from hporl.tasks import builtin
from tests import _postgres
from tests._helpers import SMALL_SPACE, make_env_fn, policy_from, write_csv

# Small models train faster on one thread here, and two-thread runs were seen to stall.
torch.set_num_threads(1)


def _own_dirs(monkeypatch: pytest.MonkeyPatch, own) -> None:
    monkeypatch.setenv("HPORL_CACHE_DIR", str(own / "cache"))
    monkeypatch.setenv("SB3_LOGDIR", str(own / "sb3"))


@pytest.fixture(scope="session", autouse=True)
def _session_cache_and_logs(tmp_path_factory):
    """Module- and session-scoped fixtures (built before any test's own directories) write
    under this session's directory."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _own_dirs(monkeypatch, tmp_path_factory.mktemp("session"))
        yield


@pytest.fixture(autouse=True)
def _own_cache_and_logs(tmp_path_factory, monkeypatch):
    """Every test writes its caches (hporl's LCBench normalisation) and SB3's default log
    folders under a directory of its own, never in the home directory or the shared temp dir,
    so the suite passes the same on a machine that never ran it."""
    _own_dirs(monkeypatch, tmp_path_factory.mktemp("own"))


@pytest.fixture(scope="session")
def digits():
    return builtin("digits")


@pytest.fixture(scope="session")
def iris():
    return builtin("iris")


@pytest.fixture(scope="session")
def small_space():
    return SearchSpace.from_dict(SMALL_SPACE)


TINY_EXPERIMENT = {
    "name": "tiny",
    "tasks": ["iris", "wine"],
    "backend": {"epochs": 2},
    "budget": 2,
    "agent": {
        "total_timesteps": 128,
        "net_arch": [16],
        "params": {"n_steps": 64, "batch_size": 32},
    },
}


def _tiny_experiment(**overrides):
    config = copy.deepcopy(TINY_EXPERIMENT)
    config.update(copy.deepcopy(overrides))
    return config


@pytest.fixture(scope="session")
def tiny_experiment():
    """A factory of the tiny meta-training experiment (two real tasks, a 16-unit net, a few
    PPO steps): ``tiny_experiment(name=..., agent=...)`` replaces top-level keys of a fresh copy."""
    return _tiny_experiment


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory, tiny_experiment):
    """A policy meta-trained for a few steps on two real tasks (shared by tune and CLI tests)."""
    from hporl import run_experiment

    out = tmp_path_factory.mktemp("meta")
    policy = run_experiment(tiny_experiment(), out=out)
    return policy, out


@pytest.fixture
def csv_file(tmp_path):
    """A small two-class CSV file (target column ``y``)."""
    return write_csv(tmp_path / "data.csv")


@pytest.fixture(scope="session")
def postgres_url():
    """SQLAlchemy URL of an empty database on a throwaway PostgreSQL server.

    `postgresql+psycopg://USER@127.0.0.1:PORT/DBNAME`, from a server this fixture starts (see
    tests/_postgres.py) and stops at the end of the session, or HPORL_TEST_POSTGRES_URL when set.
    Skips without a server, but fails under CI or HPORL_REQUIRE_POSTGRES=1.
    """
    external = os.environ.get("HPORL_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    try:
        server, url = _postgres.start_server()
    except _postgres.PostgresUnavailable as exc:
        _postgres.skip_or_fail(str(exc))
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def postgres_db_url(postgres_url):
    """URL of a fresh, uniquely named database on the `postgres_url` server, dropped afterwards."""
    try:
        url = _postgres.create_database(postgres_url)
    except _postgres.PostgresUnavailable as exc:
        _postgres.skip_or_fail(str(exc))
    try:
        yield url
    finally:
        _postgres.drop_database(url)


@pytest.fixture(scope="module")
def trained(small_space):
    """A small policy trained for 256 steps on synthetic tasks (K = 3)."""
    cfg = AgentConfig(
        total_timesteps=256, net_arch=[32], seed=1, params={"n_steps": 64, "batch_size": 32}
    )
    agent = train_agent(cfg, [make_env_fn(small_space, SyntheticTask.sample(0, 8), budget=3)])
    return policy_from(agent, small_space, cfg, budget=3)

from __future__ import annotations

import os

import optuna
import pytest

from tests import _postgres


def test_optuna_study_round_trips_through_postgres(postgres_db_url):
    assert postgres_db_url.startswith("postgresql+psycopg://")
    study = optuna.create_study(
        storage=postgres_db_url,
        study_name="roundtrip",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(lambda trial: (trial.suggest_float("x", -1.0, 1.0) - 0.25) ** 2, n_trials=4)

    loaded = optuna.load_study(study_name="roundtrip", storage=postgres_db_url)
    assert len(loaded.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in loaded.trials)
    assert [t.params for t in loaded.trials] == [t.params for t in study.trials]
    assert loaded.best_value == pytest.approx(study.best_value)


def test_each_test_gets_an_empty_database(postgres_db_url):
    assert optuna.get_all_study_names(storage=postgres_db_url) == []


@pytest.mark.skipif(
    bool(os.environ.get("HPORL_TEST_POSTGRES_URL")),
    reason="an external server's listen_addresses is not ours to check",
)
def test_server_listens_only_on_loopback(postgres_url):
    import psycopg

    with psycopg.connect(_postgres.admin_conninfo(postgres_url)) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert str(conn.execute("SELECT inet_server_addr()").fetchone()[0]) == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "outcome"),
    [
        ({}, pytest.skip.Exception),
        ({"CI": "true"}, pytest.fail.Exception),
        ({"HPORL_REQUIRE_POSTGRES": "1"}, pytest.fail.Exception),
        ({"CI": "", "HPORL_REQUIRE_POSTGRES": "0"}, pytest.skip.Exception),
    ],
)
def test_missing_server_skips_unless_required(monkeypatch, env, outcome):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("HPORL_REQUIRE_POSTGRES", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(outcome, match="no initdb here"):
        _postgres.skip_or_fail("no initdb here")

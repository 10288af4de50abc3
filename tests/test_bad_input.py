"""Every bad input a user can hand hporl, with its exact message.

Through the API each raises one typed :class:`hporl.HporlError`; through the CLI each is one line
on stderr and exit code 2, with no traceback; and nothing already stored is changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from hporl import (
    ConfigError,
    HporlError,
    Policy,
    PolicyError,
    SearchSpace,
    SearchSpaceError,
    Task,
    TaskError,
)
from hporl._io import checksum_path, meta_sha256, sha256_file, verify_checksum, write_checksum
from hporl._policy_files import FORMAT_VERSION
from hporl.cli import main
from tests._helpers import truncate

TAG_LINE = "YAML tag '!!python/object/apply:os.system' at line 1, column {col} is not allowed; hporl reads plain YAML (mappings, lists, strings, numbers, booleans)"


def hporl(*args: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the CLI in this process; return its exit code and stderr."""
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    return exited.value.code, capsys.readouterr().err


def assert_one_line(code: int, err: str, message: str) -> None:
    """Exit code 2 and exactly ``hporl: error: <message>`` on stderr."""
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [f"hporl: error: {message}"], err


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def stored(tmp_path: Path) -> Path:
    """An output directory holding a previous run's files, which no failing call may touch."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"config": {"lr": 0.1}}')
    (out / "trials.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)))
    (out / "model.pt").write_bytes(b"PK\x03\x04 previous model")
    return out


# -- YAML: experiment, space, bench ---------------------------------------------------------------
PLAIN_YAML_CASES = [
    # (name, file text, message after "<path>: ")
    ("tag", 'name: !!python/object/apply:os.system ["echo hi"]\n', TAG_LINE.format(col=7)),
    ("syntax", "a: [1, 2\n  b: }\n", "invalid YAML at line 2, column 4: expected ',' or ']', but got ':'"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a YAML text file (it holds binary data)"),
    ("latin-1", "name: caf\xe9\n".encode("latin-1"), "not a UTF-8 text file"),
    ("twice", "name: a\nname: b\n", "invalid YAML at line 2, column 1: the key 'name' appears twice in one mapping"),
]  # fmt: skip

EXPERIMENT_CASES = [
    *PLAIN_YAML_CASES,
    ("unknown key", "tasks: [iris]\nbudgt: 3\n", "unknown key 'budgt'. Did you mean 'budget'?"),
    (
        "nested unknown key",
        "tasks: [iris]\nagent: {totl_timesteps: 64}\n",
        "unknown key 'agent.totl_timesteps'. Did you mean 'total_timesteps'?",
    ),
    (
        "unknown key in a csv task",
        "tasks: [{csv: data.csv, targt: y}]\n",
        "unknown key 'tasks.0.targt'. Did you mean 'target'?",
    ),
    (
        "wrong type",
        "tasks: [iris]\nbudget: three\n",
        "budget: Input should be a valid integer, unable to parse string as an integer (got 'three')",
    ),
    ("wrong type list", "tasks: iris\n", "tasks: Input should be a valid list (got 'iris')"),
    (
        "wrong type union",
        "tasks: [3]\n",
        "tasks.0: 3 fits none of the accepted forms: Input should be a valid string; or Input "
        "should be a valid dictionary or instance of CsvTaskSpec; or Input should be a valid "
        "dictionary or instance of SyntheticTaskSpec; or Input should be an instance of Task",
    ),
    ("missing key", "name: x\n", "missing required key 'tasks'"),
    ("prose", "Tune my model, please.\n", "an experiment file must be a mapping of keys, got str"),
]


@pytest.mark.parametrize(("name", "text", "message"), EXPERIMENT_CASES, ids=lambda c: str(c)[:20])
def test_experiment_yaml_cli(tmp_path, capsys, name, text, message):
    path = tmp_path / "experiment.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err = hporl("meta-train", path, "--out", tmp_path / "run", capsys=capsys)
    assert_one_line(code, err, f"{path}: {message}")
    assert not (tmp_path / "run").exists()


def test_yaml_tags_are_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "experiment.yaml"
    path.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\ntasks: [iris]\n')
    code, err = hporl("meta-train", path, capsys=capsys)
    assert_one_line(code, err, f"{path}: {TAG_LINE.format(col=7)}")
    for text in (f'x: !!python/object/new:os.system ["touch {marker}"]\n', "x: !custom 1\n"):
        path.write_text(text)
        with pytest.raises(ConfigError, match="is not allowed; hporl reads plain YAML"):
            from hporl import ExperimentConfig

            ExperimentConfig.from_yaml(path)
    assert not marker.exists()


def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "name: bomb\ntasks: [iris]\nagent:\n  params:\n" + "".join(f"    {x}\n" for x in lines)


@pytest.mark.parametrize("where", ["experiment", "bench", "space"])
def test_yaml_alias_bombs_and_huge_files_are_refused_before_they_expand(tmp_path, capsys, where):
    from hporl._io import YAML_MAX_BYTES

    out = ["--out", str(tmp_path / "run")] if where != "space" else []
    command = {"experiment": ["meta-train"], "bench": ["bench"], "space": ["spaces"]}[where]

    def refused(path: Path, message: str) -> None:
        if where == "space":
            with pytest.raises(SearchSpaceError, match=re.escape(f"{path}: {message}")):
                SearchSpace.from_yaml(path)
            return
        code, err = hporl(*command, path, *out, capsys=capsys)
        assert code == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
        assert err.startswith(f"hporl: error: {path}: {message}"), err

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(8))  # about 550 bytes that expand to 9^9 values
    assert bomb.stat().st_size < 1000
    refused(bomb, "its aliases (*name) expand to more than 100,000 values")
    big = tmp_path / "big.yaml"
    big.write_text("x: [" + ", ".join(["1"] * (YAML_MAX_BYTES // 3 + 10)) + "]\n")
    refused(big, f"larger than {YAML_MAX_BYTES:,} bytes")
    assert not (tmp_path / "run").exists()
    # small aliases are fine: YAML's anchors have their uses
    from hporl._io import read_yaml

    small = tmp_path / "small.yaml"
    small.write_text(_alias_bomb(2))
    assert len(read_yaml(small, what="test", error=ConfigError)["agent"]["params"]["a2"]) == 9


def test_missing_and_unreadable_yaml_files(tmp_path, capsys):
    absent = tmp_path / "absent.yaml"
    code, err = hporl("meta-train", absent, capsys=capsys)
    assert_one_line(
        code, err, f"cannot read experiment file {str(absent)!r}: No such file or directory"
    )
    code, err = hporl("bench", absent, "--out", tmp_path / "b", capsys=capsys)
    assert_one_line(code, err, f"cannot read bench file {str(absent)!r}: No such file or directory")
    with pytest.raises(
        SearchSpaceError,
        match=re.escape(
            f"cannot read search space file {str(absent)!r}: No such file or directory"
        ),
    ):
        SearchSpace.from_yaml(absent)
    with pytest.raises(
        SearchSpaceError,
        match=re.escape(f"cannot read search space file {str(tmp_path)!r}: Is a directory"),
    ):
        SearchSpace.from_yaml(tmp_path)


SPACE_CASES = [
    *PLAIN_YAML_CASES,
    (
        "unknown key",
        "lr: {type: float, low: 0.1, hihg: 1}\n",
        "parameter 'lr': unknown key 'hihg' for type float. Did you mean 'high'?",
    ),
    (
        "unknown top-level key",
        "name: s\nparamters:\n  lr: {type: float, low: 0.1, high: 1}\n",
        "unknown top-level key 'paramters' in search space; expected 'name', 'description', "
        "'include' or 'parameters'. Did you mean 'parameters'?",
    ),
    (
        "unknown kind",
        "lr: {type: flot, low: 0.1, high: 1}\n",
        "parameter 'lr': unknown kind 'type: flot'; expected one of categorical, float, int, fixed. Did you mean 'float'?",
    ),
    (
        "wrong type",
        "lr: {type: float, low: abc, high: 1}\n",
        "parameter 'lr': 'low' must be a finite number, got 'abc'",
    ),
    ("wrong type log", "lr: {type: float, low: 0.1, high: 1, log: 2}\n", "parameter 'lr': 'log' must be true or false, got 2"),
    ("wrong type name", "name: [1]\nparameters: {x: {type: int, low: 0, high: 3}}\n", "the space's 'name' must be a string, got [1]"),
    ("wrong type include", "include: {optimizer: 1}\n", "'include' must be a built-in space name, a path, or a list of them, got {'optimizer': 1}"),
    ("list choice", "x: {type: categorical, choices: [[1], 2]}\n", "parameter 'x': choice [1] is not a string, finite number, bool or null"),
    ("huge int", "x: {type: int, low: 0, high: 100000000000000000000}\n", "parameter 'x': 'high' must lie within ±2**53 for an int parameter, got 100000000000000000000"),
    ("prose", "just some prose, not a mapping\n", "a search space must be a mapping, got str"),
    ("empty", "", "the file is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "message"), SPACE_CASES, ids=lambda c: str(c)[:20])
def test_space_yaml(tmp_path, name, text, message):
    path = tmp_path / "space.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SearchSpaceError) as raised:
        SearchSpace.from_yaml(path)
    assert str(raised.value) == f"{path}: {message}"


BENCH_CASES = [
    *PLAIN_YAML_CASES,
    (
        "unknown key",
        "benchmark: small\ntest_tasks: [iris]\nmethods: [random]\nbudgest: [1]\n",
        "unknown key 'budgest'. Did you mean 'budgets'?",
    ),
    (
        "wrong type",
        "benchmark: small\ntest_tasks: [iris]\nseeds: many\n",
        "seeds: Input should be a valid integer, unable to parse string as an integer (got 'many')",
    ),
    (
        "unknown method",
        "benchmark: small\ntest_tasks: [iris]\nmethods: [randm]\n",
        "unknown method 'randm'; methods: policy, random, tpe, gp, cmaes, best_average, "
        "portfolio, transfer_gp. Did you mean 'random'?",
    ),
    ("wrong type list", "benchmark: small\ntest_tasks: iris\n", "test_tasks: Input should be a valid list (got 'iris')"),
    ("prose", "Benchmark everything.\n", "a bench file must be a mapping of keys"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "message"), BENCH_CASES, ids=lambda c: str(c)[:20])
def test_bench_yaml_cli(tmp_path, stored, capsys, name, text, message):
    path = tmp_path / "bench.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(stored)
    code, err = hporl("bench", path, "--out", stored, capsys=capsys)
    assert_one_line(code, err, f"{path}: {message}")
    assert snapshot(stored) == before


def test_the_installed_command_prints_one_line(tmp_path):
    """The real entry point, in a fresh process, as a user runs it."""
    path = tmp_path / "experiment.yaml"
    path.write_text('name: !!python/object/apply:os.system ["echo hi"]\n')
    exe = Path(sys.executable).with_name("hporl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hporl.cli"]
    proc = subprocess.run(
        [*cmd, "meta-train", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "hi" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [f"hporl: error: {path}: {TAG_LINE.format(col=7)}"]


# -- CSV ------------------------------------------------------------------------------------------
def _table(n: int = 60, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = np.where(X[:, 0] - X[:, 2] > 0, "a", "b")
    return [[f"{v:.3f}" for v in r] + [t] for r, t in zip(X, y, strict=True)]


def _csv(rows: list[list[str]], header: str = "x1,x2,x3,y") -> str:
    return header + "\n" + "\n".join(",".join(r) for r in rows) + "\n"


def _with(change) -> str:
    rows = _table()
    change(rows)
    return _csv(rows)


def _set(row: int, col: int, value: str):
    def change(rows: list[list[str]]) -> None:
        rows[row][col] = value

    return change


def _target_gaps(rows: list[list[str]]) -> None:
    rows[3][3] = ""
    rows[7][3] = "NA"


def _empty_column(rows: list[list[str]]) -> None:
    for r in rows:
        r[1] = ""


PROSE = "It was a dark and stormy night and the rain fell in torrents.\n" * 10

CSV_CASES = [
    # (name, file content, target, message; "{p}" is the file's path)
    ("missing target, close", _csv(_table()), "Y", "{p}: no target column 'Y'; the columns are ['x1', 'x2', 'x3', 'y']. Did you mean 'y'?"),
    ("missing target, far", _csv(_table()), "label", "{p}: no target column 'label'; the columns are ['x1', 'x2', 'x3', 'y']."),
    ("target with gaps", _with(_target_gaps), "y", "{p}: the target column 'y' has 2 missing value(s) (first on line 5); drop or fill those rows"),
    ("target nan", _with(_set(10, 3, "nan")), "y", "{p}: the target column 'y' has 1 missing value(s) (first on line 12); drop or fill those rows"),
    ("binary", bytes(range(256)) * 8, "y", "{p} is not a CSV file (it holds binary data)"),
    ("binary after text", _csv(_table()).encode() + b"\x00\x01" * 3000, "y", "{p} is not a CSV file (it holds binary data)"),
    ("not UTF-8", "x,y\n" + "caf\xe9,1\n" * 10, "y", "{p} is not a UTF-8 text CSV file"),
    ("prose", PROSE, "y", "{p}: no target column 'y'; the file has a single column 'It was a dark and stormy night and the rain fell in torre...': is it a CSV file with a header row of column names?"),
    ("prose with a delimiter", PROSE.replace(" and the", "; the"), "y", "{p}: no target column 'y'; the columns are ['It was a dark and stormy night', 'the rain fell in torrents.']."),
    ("prose, target found", "Once, upon a time\nthere was a file\n", "upon a time", "{p}, line 2: 1 fields where the header has 2; is this a CSV file with the right delimiter?"),
    ("only the target", "y\n" + "a\nb\n" * 10, "y", "{p}: no feature columns besides the target 'y'"),
    ("inf in a feature", _with(_set(4, 1, "inf")), "y", "{p}: feature column 'x2' contains inf ('inf' on line 6); replace it or drop the row"),
    ("-inf in a feature", _with(_set(9, 0, "-Infinity")), "y", "{p}: feature column 'x1' contains inf ('-Infinity' on line 11); replace it or drop the row"),
    ("inf in the target", _csv([*[[*r[:3], str(i / 7)] for i, r in enumerate(_table())][:20], ["1", "2", "3", "inf"]]), "y", "{p}: the target column 'y' contains inf ('inf' on line 22); replace it or drop the row"),
    ("too few rows", _csv(_table(4)), "y", "{p}: 4 data rows are too few for train/val/test splits (at least 5 are needed)"),
    ("header only", "x1,x2,y\n", "y", "{p}: 0 data rows are too few for train/val/test splits (at least 5 are needed)"),
    ("empty column", _with(_empty_column), "y", "{p}: feature column 'x2' is entirely empty; drop it"),
    ("empty file", "", "y", "{p} is empty"),
    ("ragged", _csv(_table()) + "1,2\n", "y", "{p}, line 62: 2 fields where the header has 4; is this a CSV file with the right delimiter?"),
]  # fmt: skip


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="latin-1" if "\xe9" in content else "utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "content", "target", "message"), CSV_CASES, ids=lambda c: str(c)[:24]
)
def test_csv_api(tmp_path, name, content, target, message):
    path = _write(tmp_path / "data.csv", content)
    with pytest.raises(TaskError) as raised:
        Task.from_csv(path, target=target, epochs=1)
    assert str(raised.value) == message.format(p=path)


def test_missing_csv_file(tmp_path):
    with pytest.raises(TaskError, match=re.escape("cannot read CSV file")):
        Task.from_csv(tmp_path / "absent.csv", target="y")


@pytest.mark.parametrize(
    ("name", "content", "target", "message"), CSV_CASES, ids=lambda c: str(c)[:24]
)
def test_csv_cli_tune(tiny_policy, tmp_path, stored, capsys, name, content, target, message):
    _, meta_dir = tiny_policy
    path = _write(tmp_path / "data.csv", content)
    before = snapshot(stored)
    code, err = hporl(
        "tune", "--data", path, "--target", target, "--policy", meta_dir, "--out", stored,
        "--trials", 1, "--epochs", 1, capsys=capsys,
    )  # fmt: skip
    assert_one_line(code, err, message.format(p=path))
    assert snapshot(stored) == before


# -- policy directories ---------------------------------------------------------------------------
@pytest.fixture()
def policy_dir(tiny_policy, tmp_path) -> Path:
    """A private copy of a saved policy, to damage."""
    _, meta_dir = tiny_policy
    return Path(shutil.copytree(meta_dir / "policy", tmp_path / "policy"))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_json(change):
    def damage(d: Path) -> None:
        meta = json.loads((d / "policy.json").read_text())
        change(meta)
        (d / "policy.json").write_text(json.dumps(meta, indent=2))

    return damage


def _flip_in_json_value(d: Path) -> None:
    # one byte of "best_metric" becomes "best_metrib": still valid JSON, but edited
    text = (d / "policy.json").read_bytes()
    _flip(d / "policy.json", text.index(b'"best_metric"') + len("best_metric"))


def _format_1(meta: dict) -> None:
    meta["format_version"] = 1
    del meta["checksums"], meta["meta_sha256"]


def _resigned(change):
    """An edit with its meta_sha256 redone: only the weights checksum can catch it."""

    def edit(meta: dict) -> None:
        change(meta)
        meta["meta_sha256"] = meta_sha256(meta)

    return _edit_json(edit)


EDITED = "{d}/policy.json was edited by hand: its checksum does not match (meta_sha256 differs from its content); restore the saved file or re-run `hporl meta-train`"
CORRUPTED = (
    "{d}/policy.safetensors is corrupted or was changed: its sha256 does not match policy.json"
)

POLICY_CASES = [
    # (name, damage, message; "{d}" is the policy directory)
    ("no policy.json", lambda d: (d / "policy.json").unlink(), "{d} is not a policy directory: policy.json is missing"),
    ("no weights", lambda d: (d / "policy.safetensors").unlink(), "{d} is not a policy directory: policy.safetensors is missing"),
    ("json value edited", _edit_json(lambda m: m["layout"].update(history=5)), EDITED),
    ("json key added", _edit_json(lambda m: m.update(note="mine")), EDITED),
    ("json byte flipped", _flip_in_json_value, EDITED),
    ("json checksum removed", _edit_json(lambda m: m.pop("meta_sha256")), "{d}/policy.json was edited by hand: its checksum does not match (it has no meta_sha256); restore the saved file or re-run `hporl meta-train`"),
    ("json truncated", truncate("policy.json"), re.compile(r"\{d\}/policy\.json is not valid JSON: .+")),
    ("json not an object", lambda d: (d / "policy.json").write_text("[1, 2]"), "{d}/policy.json is not a policy description: expected a JSON object"),
    ("older format", _edit_json(_format_1), f"{{d}}/policy.json: the policy was saved in format_version 1 and this hporl reads format {FORMAT_VERSION}; re-run `hporl meta-train` to make a new policy"),
    ("weights truncated", truncate("policy.safetensors"), CORRUPTED),
    ("weights truncated by one byte", truncate("policy.safetensors", keep=0.9999), CORRUPTED),
    ("weights byte flipped", lambda d: _flip(d / "policy.safetensors", -1), CORRUPTED),
    ("weights checksum edited too", _resigned(lambda m: m["checksums"].update({"policy.safetensors": "0" * 64})), CORRUPTED),
]  # fmt: skip


def _expect(message, d: Path) -> str | re.Pattern[str]:
    if isinstance(message, re.Pattern):
        return re.compile(message.pattern.replace(r"\{d\}", re.escape(str(d))))
    return message.format(d=d)


def _matches(text: str, expected: str | re.Pattern[str]) -> bool:
    return bool(expected.fullmatch(text)) if isinstance(expected, re.Pattern) else text == expected


@pytest.mark.parametrize(("name", "damage", "message"), POLICY_CASES, ids=lambda c: str(c)[:24])
def test_damaged_policy_api(policy_dir, name, damage, message):
    Policy.load(policy_dir)  # the copy is good before the damage
    damage(policy_dir)
    with pytest.raises(PolicyError) as raised:
        Policy.load(policy_dir)
    assert _matches(str(raised.value), _expect(message, policy_dir)), str(raised.value)


@pytest.mark.parametrize(("name", "damage", "message"), POLICY_CASES, ids=lambda c: str(c)[:24])
def test_damaged_policy_cli_tune(policy_dir, tmp_path, stored, capsys, name, damage, message):
    data = tmp_path / "data.csv"
    data.write_text(_csv(_table()))
    damage(policy_dir)
    before = snapshot(stored)
    code, err = hporl(
        "tune", "--data", data, "--target", "y", "--policy", policy_dir, "--out", stored,
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hporl: error: "), err
    assert _matches(lines[0].removeprefix("hporl: error: "), _expect(message, policy_dir)), err
    assert snapshot(stored) == before


def test_a_flipped_weight_still_parses_so_only_the_checksum_catches_it(policy_dir):
    _flip(policy_dir / "policy.safetensors", -1)
    with safe_open(str(policy_dir / "policy.safetensors"), "pt") as f:
        assert len(list(f.keys())) > 0
    with pytest.raises(PolicyError, match="is corrupted or was changed"):
        Policy.load(policy_dir)


def test_policy_dir_that_is_not_a_policy(tmp_path, capsys):
    with pytest.raises(
        PolicyError,
        match=re.escape(f"{tmp_path} is not a policy directory: policy.json is missing"),
    ):
        Policy.load(tmp_path)
    data = tmp_path / "data.csv"
    data.write_text(_csv(_table()))
    code, err = hporl("tune", "--data", data, "--target", "y", "--policy", tmp_path / "nope", capsys=capsys)  # fmt: skip
    assert_one_line(
        code, err, f"{tmp_path / 'nope'} is not a policy directory: policy.json is missing"
    )


def test_policy_for_another_space(tiny_policy, policy_dir):
    policy, _ = tiny_policy
    params = policy.space.to_dict()["parameters"]
    name = next(n for n, p in params.items() if p["type"] == "float")
    low = params[name]["low"]
    wider = {**params, name: {**params[name], "low": low / 10 if low > 0 else low - 1}}
    with pytest.raises(
        PolicyError,
        match=re.escape(
            f"parameter {name!r}: the policy was trained with low={low!r}, the space has "
            f"low={wider[name]['low']!r}"
        ),
    ):
        Policy.load(policy_dir, space=SearchSpace.from_dict(wider))
    extra = {**params, "zz_extra": {"type": "categorical", "choices": ["a", "b"]}}
    with pytest.raises(
        PolicyError,
        match=re.escape("the space has parameter 'zz_extra', which the policy was not trained for"),
    ):
        Policy.load(policy_dir, space=SearchSpace.from_dict(extra))
    fewer = {k: v for k, v in params.items() if k != name}
    with pytest.raises(PolicyError, match=re.escape(f"the policy was trained with parameter {name!r}, which the space lacks")):  # fmt: skip
        Policy.load(policy_dir, space=SearchSpace.from_dict(fewer))
    assert Policy.load(policy_dir, space=policy.space).space == policy.space


def _rename(params: dict, old: str, new: str) -> None:
    params[new] = params.pop(old)
    for spec in params.values():  # conditions on the renamed parameter follow it
        if old in spec.get("when", {}):
            spec["when"][new] = spec["when"].pop(old)


def _rename_choice(params: dict, name: str, old: str, new: str) -> None:
    params[name]["choices"] = [new if c == old else c for c in params[name]["choices"]]
    for spec in params.values():
        values = spec.get("when", {}).get(name)
        if values is not None:
            spec["when"][name] = [new if v == old else v for v in values]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["lr"].update(high=1e6),
            "search space parameter 'lr': high 1000000.0 is outside what training accepts, (0, 1000]",
        ),
        (
            lambda p: _rename(p, "lr", "lrx"),
            re.compile(
                r"search space parameter 'lrx' is not a training hyperparameter \(.+\), an augmentation key, nor read by the model \(its factory takes no 'config'\): it would change nothing"
            ),
        ),
        (
            lambda p: _rename_choice(p, "optimizer", "radam", "lion"),
            re.compile(
                r"search space parameter 'optimizer': training knows no 'lion' \(one of sgd, .+\)"
            ),
        ),
        (
            lambda p: p["batch_size"].update(low=0, log=False),
            re.compile(
                r"search space parameter 'batch_size': low 0 is outside what training accepts, \[1, 1e\+06\]"
            ),
        ),
    ],
    ids=["lr-1e6", "renamed", "unknown-choice", "batch-0"],
)
def test_a_resigned_policy_whose_space_training_would_misread(
    policy_dir, tmp_path, stored, capsys, edit, message
):
    """Anyone can recompute the checksum of an edited policy.json; what training would ignore or
    cannot train is refused before any trial, instead of being reported in the best config."""
    _resigned(lambda m: edit(m["space"]["parameters"]))(policy_dir)
    Policy.load(policy_dir)  # a policy is backend-agnostic: the space is checked where it trains
    data = tmp_path / "data.csv"
    data.write_text(_csv(_table()))
    before = snapshot(stored)
    code, err = hporl(
        "tune", "--data", data, "--target", "y", "--policy", policy_dir, "--out", stored,
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert _matches(err.strip().removeprefix("hporl: error: "), message), err
    assert snapshot(stored) == before


def test_save_writes_both_checksums(policy_dir):
    meta = json.loads((policy_dir / "policy.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 2
    assert meta["checksums"] == {
        "policy.safetensors": sha256_file(policy_dir / "policy.safetensors")
    }
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    assert (
        meta["meta_sha256"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    )


# -- the checksum helper for checkpoints and models -----------------------------------------------
class CheckpointError(HporlError):
    pass


@pytest.fixture()
def checked(tmp_path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(bytes(range(256)) * 40)
    sidecar = write_checksum(path)
    assert sidecar == checksum_path(path) == tmp_path / "model.pt.sha256"
    return path


def test_checksum_round_trip_and_sha256sum_format(checked):
    digest = hashlib.sha256(checked.read_bytes()).hexdigest()
    assert sha256_file(checked) == digest
    assert checksum_path(checked).read_text() == f"{digest}  model.pt\n"
    assert verify_checksum(checked, error=CheckpointError) is True
    checksum_path(checked).write_text(digest.upper())  # plain hex is read too
    assert verify_checksum(checked, error=CheckpointError) is True
    if shutil.which("sha256sum"):
        write_checksum(checked)
        proc = subprocess.run(
            ["sha256sum", "-c", checksum_path(checked).name],
            cwd=checked.parent,
            capture_output=True,
        )
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "{p} is corrupted or was changed: its sha256 does not match model.pt.sha256"),
        (lambda p: p.write_bytes(b""), "{p} is corrupted or was changed: its sha256 does not match model.pt.sha256"),
        (lambda p: _flip(p, 1000), "{p} is corrupted or was changed: its sha256 does not match model.pt.sha256"),
        (lambda p: checksum_path(p).unlink(), "{p} cannot be checked: its checksum file model.pt.sha256 is missing; it was not written by hporl, or the checksum was removed"),
        (lambda p: checksum_path(p).write_text("not a digest"), "{p}.sha256 is not a checksum file: expected 64 hex digits"),
        (lambda p: p.unlink(), "{p} is missing"),
    ],
    ids=["truncated", "emptied", "byte flipped", "no sidecar", "bad sidecar", "no file"],
)  # fmt: skip
def test_checksum_refuses_damaged_files_with_the_callers_error(checked, damage, message):
    damage(checked)
    with pytest.raises(CheckpointError) as raised:
        verify_checksum(checked, error=CheckpointError)
    assert str(raised.value) == message.format(p=checked)


def test_checksum_missing_ok_tolerates_only_an_absent_sidecar(checked):
    checksum_path(checked).unlink()
    assert verify_checksum(checked, error=CheckpointError, missing_ok=True) is False
    write_checksum(checked)
    _flip(checked, 0)
    with pytest.raises(CheckpointError, match="is corrupted or was changed"):
        verify_checksum(checked, error=CheckpointError, missing_ok=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
        (["--seed", str(2**32)], f"--seed must be an integer in [0, 2**32), got {2**32}"),
    ],
    ids=["epochs0", "seed-1", "seed2^32"],
)
def test_tune_refuses_epochs_and_seeds_out_of_range(tmp_path, capsys, args, message):
    data = tmp_path / "data.csv"
    data.write_text(_csv(_table()))
    code, err = hporl("tune", "--data", data, "--target", "y", *args, "--out", tmp_path / "o", capsys=capsys)  # fmt: skip
    assert_one_line(code, err, message)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="must be"):
        from hporl import tune_model

        kwargs = {"epochs": 0} if "epochs" in args[0] else {"seed": int(args[1])}
        tune_model(data=data, target="y", **kwargs)


def test_json_reports_are_strict_json(tmp_path):
    from hporl._io import write_json

    write_json(
        tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(2)}
    )
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": 2.0}


def test_decimal_commas_are_read_as_numbers(tmp_path, caplog):
    rng = np.random.default_rng(0)
    x = rng.normal(size=120)
    rows = ["x;z;y"] + [f"{v:.3f};{i % 7};{int(v > 0)}".replace(".", ",") for i, v in enumerate(x)]
    path = tmp_path / "semi.csv"
    path.write_text("\n".join(rows) + "\n")
    task = Task.from_csv(path, target="y", epochs=1)
    assert task.info["frac_categorical"] == 0.0  # numbers, not 120 categories
    assert task.X_train.shape[1] == 2
    assert "decimal commas" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,a,y\n1,2,3\n4,5,6\n", "column names appear more than once: 'a'"),
    ],
)
def test_duplicate_columns_are_refused(tmp_path, text, message):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(TaskError, match=re.escape(message)):
        Task.from_csv(path, target="y")


def test_constant_or_absurd_regression_targets_are_refused():
    X = np.random.default_rng(0).normal(size=(60, 3))
    with pytest.raises(TaskError, match="the regression target is constant"):
        Task.from_arrays(X, np.full(60, 2.5), task_type="regression")
    with pytest.raises(TaskError, match="too large to learn from"):
        Task.from_arrays(X, np.linspace(1, 2, 60) * 1e300, task_type="regression")


def test_a_csv_from_dev_zero_is_refused_at_once(capsys):
    with pytest.raises(TaskError, match="is not a CSV file"):
        Task.from_csv("/dev/zero", target="y")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda:7", "device 'cuda:7': this machine (or torch build) has no CUDA"),
        ("banana", "device 'banana' is not a device name torch knows"),
    ],
)
def test_devices_that_are_not_there_are_refused_before_training(tmp_path, capsys, device, message):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = tmp_path / "experiment.yaml"
    path.write_text(f"tasks: [iris]\nbackend: {{device: '{device}'}}\n")
    code, err = hporl("meta-train", path, "--out", tmp_path / "run", capsys=capsys)
    assert code == 2 and "Traceback" not in err and message in err, err
    path.write_text(f"tasks: [iris]\nagent: {{device: '{device}'}}\n")
    code, err = hporl("meta-train", path, "--out", tmp_path / "run", capsys=capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "tasks: [iris]\nagent: {learning_rate: .inf}\n",
            "agent.learning_rate: Input should be less than or equal to 1",
        ),
        (
            "tasks: [iris]\nagent: {params: {n_steps: 0}}\n",
            "params.n_steps must be an integer in [1, 10**8], got 0",
        ),
        ("tasks: [iris]\nagent: {params: {gamma: .nan}}\n", "params.gamma must be a finite number"),
        (
            "tasks: [iris]\nagent: {net_arch: [1000000000000]}\n",
            "agent.net_arch.0: Input should be less than or equal to 4096",
        ),
        (
            "tasks: [iris]\nn_bins: 1000000000000\n",
            "n_bins: Input should be less than or equal to 4096",
        ),
    ],
    ids=["lr-inf", "n_steps0", "gamma-nan", "net_arch", "n_bins"],
)
def test_agent_settings_that_would_fail_mid_training_are_refused(tmp_path, capsys, text, message):
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    code, err = hporl("meta-train", path, "--out", tmp_path / "run", capsys=capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_storage_that_is_a_directory_is_refused(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text(_csv(_table()))
    (tmp_path / "db").mkdir()
    code, err = hporl("tune", "--data", data, "--target", "y", "--storage", tmp_path / "db", "--out", tmp_path / "o", capsys=capsys)  # fmt: skip
    assert_one_line(
        code,
        err,
        f"storage {str(tmp_path / 'db')!r} is a directory; give a SQLite file in it "
        f"(e.g. {str(tmp_path / 'db' / 'trials.db')!r}) or a database URL",
    )

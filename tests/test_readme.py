"""Every Python and YAML example in the README runs as written (so that it cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(python|yaml)\n(.*?)^```", re.S | re.M)


def _blocks(language: str) -> list[tuple[int, str]]:
    text = README.read_text()
    return [
        (text[: m.start()].count("\n") + 1, m.group(2))
        for m in BLOCK.finditer(text)
        if m.group(1) == language
    ]


def test_the_readme_has_examples():
    assert len(_blocks("python")) >= 5 and len(_blocks("yaml")) >= 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("line", "code"), _blocks("python"), ids=lambda v: f"line{v}" if isinstance(v, int) else ""
)
def test_python_example_runs(line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever it writes (runs/...) stays in this test's folder
    namespace: dict = {"__name__": f"readme_line_{line}"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # our own README


@pytest.mark.parametrize(
    ("line", "text"), _blocks("yaml"), ids=lambda v: f"line{v}" if isinstance(v, int) else ""
)
def test_yaml_example_loads(line, text, tmp_path):
    from hporl import SearchSpace
    from hporl.bench import BenchConfig
    from hporl.experiment import ExperimentConfig

    data = yaml.safe_load(text)
    path = tmp_path / "example.yaml"
    path.write_text(text)
    if "parameters" in data:
        space = SearchSpace.from_yaml(path)
        assert space.default() == space.validate(space.default())
    elif "benchmark" in data:
        assert BenchConfig.load(path).methods == data["methods"]
    else:
        assert ExperimentConfig.from_yaml(path).name

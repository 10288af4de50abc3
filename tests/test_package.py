"""The package's public names: each resolves, and importing ``hporl`` (or its command line) loads
no torch until a name that needs it is used."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hporl


@pytest.mark.parametrize("name", hporl.__all__)
def test_every_public_name_resolves(name):
    assert getattr(hporl, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        hporl.Nope  # noqa: B018


def test_importing_hporl_and_its_command_line_loads_no_torch():
    code = "import sys, hporl, hporl.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(set(hporl._WHERE.values())))
def test_each_public_module_imports_first_in_a_fresh_interpreter(module):
    """``from hporl import HPOEnv`` as a program's first import failed on an import cycle
    (hporl.rewards -> hporl.backends -> the surrogate -> hporl.rewards) that the test suite,
    importing other modules first, never met."""
    name = next(n for n, m in hporl._WHERE.items() if m == module)
    done = subprocess.run(
        [sys.executable, "-c", f"from hporl import {name}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-1500:]

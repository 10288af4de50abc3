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

from __future__ import annotations

import pytest
import torch

from hporl.tasks import builtin

# Small models train faster on one thread here, and two-thread runs were seen to stall.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    return builtin("digits")


@pytest.fixture(scope="session")
def iris():
    return builtin("iris")

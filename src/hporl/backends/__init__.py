"""Backends evaluate a configuration on a task: real training, a published surrogate (any
YAHPO Gym scenario; LCBench is one), or a surrogate learned from the trial store."""

from hporl.backends._base import STATUSES, Backend, EpochCallback, TrialResult
from hporl.backends.lcbench import LCBenchBackend, LCBenchTask
from hporl.backends.surrogate import SurrogateBackend
from hporl.backends.synthetic import SyntheticBackend, SyntheticTask
from hporl.backends.torch_backend import TorchBackend
from hporl.backends.yahpo import YahpoBackend, YahpoTask

__all__ = [
    "STATUSES",
    "Backend",
    "EpochCallback",
    "LCBenchBackend",
    "LCBenchTask",
    "SurrogateBackend",
    "SyntheticBackend",
    "SyntheticTask",
    "TorchBackend",
    "TrialResult",
    "YahpoBackend",
    "YahpoTask",
]

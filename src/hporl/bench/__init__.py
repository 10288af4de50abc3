"""Benchmarks: methods x held-out tasks x budgets x seeds -> normalised regret, reports, plots."""

from hporl.bench._report import normalised_regret, ranks
from hporl.bench._runner import BenchConfig, run
from hporl.bench._samplers import (
    METHODS,
    PRUNED_METHODS,
    RUNGS,
    FixedSequenceSampler,
    Rungs,
    TransferCandidates,
    TransferGPSampler,
    make_sampler,
)

__all__ = [
    "METHODS",
    "PRUNED_METHODS",
    "RUNGS",
    "BenchConfig",
    "FixedSequenceSampler",
    "Rungs",
    "TransferCandidates",
    "TransferGPSampler",
    "make_sampler",
    "normalised_regret",
    "ranks",
    "run",
]

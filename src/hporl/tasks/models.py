"""Built-in model factories. Each is called as ``factory(input_shape, n_outputs)`` and returns a
fresh ``nn.Module``; a factory that also takes ``config`` (the trial's configuration, or ``None``
for its defaults) can read architecture hyperparameters from it, as :func:`lcbench_mlp` does."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = [
    "MLP",
    "LeNet",
    "SmallCNN",
    "factory_spec",
    "from_factory_spec",
    "lcbench_mlp",
    "linear",
    "make_cnn",
    "make_lenet",
    "make_mlp",
    "mlp",
]


def _flat(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> ReLU (-> Dropout)`` for each hidden width, then a linear head."""

    def __init__(
        self,
        input_dim: int,
        n_outputs: int,
        hidden: Sequence[int] = (128, 64),
        dropout: float | Sequence[float] = 0.0,
    ) -> None:
        drops = [dropout] * len(hidden) if isinstance(dropout, (int, float)) else list(dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_dim
        for h, p in zip(hidden, drops, strict=True):
            layers += [nn.Linear(width, h), nn.ReLU()]
            if p > 0:
                layers.append(nn.Dropout(p))
            width = h
        layers.append(nn.Linear(width, n_outputs))
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (the second with stride 2), global average pooling, linear head.

    Works for any image of at least 4x4 pixels with any number of channels.
    """

    def __init__(self, in_channels: int, n_outputs: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, n_outputs)

    def forward(self, x: Any) -> Any:
        return self.head(self.features(x))


class LeNet(nn.Sequential):
    """Two ``3x3 conv -> ReLU -> 2x2 max-pool`` blocks (16 and 32 channels), then an MLP head
    (64 hidden units). For images whose sides are multiples of 4 (the generated 16x16 tasks)."""

    def __init__(self, in_channels: int, height: int, width: int, n_outputs: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (height // 4) * (width // 4), 64),
            nn.ReLU(),
            nn.Linear(64, n_outputs),
        )


def make_mlp(input_shape: Sequence[int], n_outputs: int) -> nn.Module:
    """The default tabular model: an MLP with hidden widths (128, 64)."""
    return MLP(_flat(input_shape), n_outputs)


def mlp(hidden: Sequence[int] = (128, 64), dropout: float = 0.0) -> Any:
    """A factory for an MLP of the given widths (e.g. ``model=mlp((256, 256, 128))``)."""

    def factory(input_shape: Sequence[int], n_outputs: int) -> nn.Module:
        return MLP(_flat(input_shape), n_outputs, hidden=hidden, dropout=dropout)

    factory.__name__ = f"mlp_{'x'.join(map(str, hidden)) or 'linear'}"
    factory.__qualname__ = factory.__name__
    factory.hporl_spec = {  # type: ignore[attr-defined]
        "factory": "mlp",
        "kwargs": {"hidden": [int(h) for h in hidden], "dropout": float(dropout)},
    }
    return factory


def linear(input_shape: Sequence[int], n_outputs: int) -> nn.Module:
    """A linear model (logistic / linear regression)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), n_outputs))


def make_cnn(input_shape: Sequence[int], n_outputs: int) -> nn.Module:
    """The default image model: :class:`SmallCNN` for ``(C, H, W)`` inputs."""
    return SmallCNN(int(input_shape[0]), n_outputs)


def make_lenet(input_shape: Sequence[int], n_outputs: int) -> nn.Module:
    """:class:`LeNet` for ``(C, H, W)`` inputs (the default model of the generated image tasks)."""
    c, h, w = (int(v) for v in input_shape)
    return LeNet(c, h, w, n_outputs)


def lcbench_mlp(
    input_shape: Sequence[int], n_outputs: int, config: Mapping[str, Any] | None = None
) -> nn.Module:
    """LCBench's funnel-shaped MLP (Zimmer et al., 2021), sized by the trial's configuration.

    ``num_layers`` hidden layers; widths shrink linearly from ``max_units`` to ``n_outputs``;
    dropout grows linearly from 0 to ``max_dropout`` over the hidden layers.
    """
    config = dict(config or {})
    num_layers = int(config.get("num_layers", 3))
    max_units = int(config.get("max_units", 256))
    max_dropout = float(config.get("max_dropout", 0.5))
    widths = [
        max(n_outputs, round(max_units - i * (max_units - n_outputs) / num_layers))
        for i in range(num_layers)
    ]
    drops = [max_dropout * i / max(num_layers - 1, 1) for i in range(num_layers)]
    return MLP(_flat(input_shape), n_outputs, hidden=widths, dropout=drops)


def _named() -> dict[str, Any]:
    return {
        "make_mlp": make_mlp,
        "linear": linear,
        "make_cnn": make_cnn,
        "make_lenet": make_lenet,
        "lcbench_mlp": lcbench_mlp,
    }


def factory_spec(factory: Any) -> dict[str, Any] | None:
    """How to rebuild a built-in factory from JSON (``{"factory": name, "kwargs": {...}}``), or
    ``None`` for anything else (a user's factory or module, which JSON cannot describe)."""
    spec = getattr(factory, "hporl_spec", None)
    if isinstance(spec, dict):
        return {"factory": spec["factory"], "kwargs": dict(spec["kwargs"])}
    for name, f in _named().items():
        if factory is f:
            return {"factory": name, "kwargs": {}}
    return None


def from_factory_spec(spec: Mapping[str, Any]) -> Any:
    """The factory that :func:`factory_spec` described.

    Raises:
        KeyError: the spec names no built-in factory (or gives keyword arguments it does not take).
    """
    name, kwargs = spec["factory"], dict(spec.get("kwargs") or {})
    if name == "mlp":
        unknown = set(kwargs) - {"hidden", "dropout"}
        if unknown:
            raise KeyError(f"mlp takes hidden and dropout, not {sorted(unknown)}")
        return mlp(**kwargs)
    named = _named()
    if name not in named or kwargs:
        raise KeyError(f"no built-in model factory {name!r} with arguments {kwargs}")
    return named[name]

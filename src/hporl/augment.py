"""Data augmentation of image tasks: learned AutoAugment-style policies, RandAugment, TrivialAugment.

A configuration chooses augmentation with the ``augment`` key (the built-in ``autoaugment``
space, or :func:`autoaugment_space`):

- ``none``: no augmentation;
- ``trivialaugment`` (Müller & Hutter, 2021): each image gets one operation drawn uniformly, at
  a strength drawn uniformly from the 31 levels 0/30 .. 30/30;
- ``randaugment`` (Cubuk et al., 2020): each image gets ``randaugment_n`` operations drawn
  uniformly, each at strength ``randaugment_m / 30`` (torchvision's and kornia's 0-30 scale;
  default N=2, M=9);
- ``autoaugment`` (Cubuk et al., 2019): N sub-policies ``subpolicy<i>_{op,prob,mag}<j>``
  (i = 1..N, j = 1, 2); each image draws one sub-policy, then applies its first and second
  operation, each with its probability (11 levels 0.0, 0.1, .., 1.0) at its magnitude (10
  levels 0..9, strength ``mag / 9``).

Operations (:data:`OPERATIONS`) and their strength-1 extremes: ``identity``; ``auto_contrast``,
``equalize``, ``invert`` (no magnitude); ``rotate`` (±30°), ``shear_x``/``shear_y`` (±0.3),
``translate_x``/``translate_y`` (±0.45 of the side), ``contrast``/``brightness``/``sharpness``
(factor 1 ± 0.9), with a random sign per image; ``solarize`` (threshold 1 - strength),
``posterize`` (8 - ceil(4 x strength) bits), ``cutout`` (a gray square of side up to 0.6 of the
image, centred uniformly). Strength 0 leaves an image unchanged for every operation that has a
magnitude. AutoAugment's ``color`` (saturation) and ``sample_pairing`` are left out: the first
does nothing to the 1-channel images most tasks here have.

Everything runs per sample on batched tensors, with kornia's kernels (``kornia.enhance``,
``kornia.geometry.transform.warp_affine``; ``equalize`` and ``cutout`` are written here, since
kornia's ``equalize``, like PIL's, leaves channels of fewer than 256 pixels unchanged) and every
random draw taken from a ``torch.Generator`` that the
:class:`Augmenter` owns, so results depend on the seed only, never on torch's global RNG. Images of
any channel count work, 1-channel ones included: the policies are composed here from single
operations (kornia's own ``AutoAugment`` class refuses 1-channel images). Task images are
standardised; the augmenter maps each channel to [0, 1] by the train split's range, augments,
and maps back. Only training batches are augmented (see :class:`hporl.TorchBackend`).

kornia is an optional dependency: ``pip install 'hporl[augment]'``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hporl._io import did_you_mean
from hporl.exceptions import ConfigError, TaskError

if TYPE_CHECKING:
    from hporl.space import SearchSpace

__all__ = [
    "AUGMENT_KEY",
    "OPERATIONS",
    "POLICIES",
    "AugmentPolicy",
    "Augmenter",
    "apply_operation",
    "augment_images",
    "autoaugment_space",
    "check_config",
    "check_space",
    "is_augment_key",
    "op_counts",
]

AUGMENT_KEY = "augment"
POLICIES = ("none", "trivialaugment", "randaugment", "autoaugment")
OPERATIONS = (
    "identity",
    "auto_contrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "solarize",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "cutout",
)
PROBABILITIES = tuple(round(i / 10, 1) for i in range(11))
MAGNITUDES = tuple(range(10))
MAX_MAGNITUDE = MAGNITUDES[-1]
RANDAUGMENT_LEVELS = 30  # randaugment_m and TrivialAugment's strengths lie on 0..30
DEFAULT_SUBPOLICIES = 5
_NO_MAGNITUDE = frozenset({"identity", "auto_contrast", "equalize", "invert"})
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
# AutoAugment's reduced-CIFAR-10 policy, first five sub-policies (the defaults of the space)
_CIFAR10 = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("auto_contrast", 0.5, 8), ("equalize", 0.9, 2)),
)
_NO_MAGNITUDE_MASK = torch.tensor([op in _NO_MAGNITUDE for op in OPERATIONS])
_GEOMETRIC_MASK = torch.tensor([op in _GEOMETRIC for op in OPERATIONS])
_GEOMETRIC_INDEX = torch.tensor(
    [_GEOMETRIC.index(op) if op in _GEOMETRIC else -1 for op in OPERATIONS]
)
_SUB_KEY = re.compile(r"subpolicy(\d+)_(op|prob|mag)([12])")
_RA_KEYS = ("randaugment_n", "randaugment_m")


def _kornia() -> Any:
    try:
        import kornia
    except ImportError as err:
        raise ConfigError(
            "data augmentation needs kornia, which is not installed: pip install 'hporl[augment]'"
        ) from err
    return kornia


def is_augment_key(key: str) -> bool:
    """Whether a configuration key belongs to augmentation (``augment``, ``randaugment_*``,
    ``subpolicy<i>_*``)."""
    return (
        key == AUGMENT_KEY
        or key in _RA_KEYS
        or (isinstance(key, str) and key.startswith("subpolicy"))
    )


# -- the policy a configuration describes ---------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    """One operation of a sub-policy: applied with ``probability`` at magnitude ``magnitude``
    (0..9, strength ``magnitude / 9``)."""

    name: str
    probability: float
    magnitude: float


@dataclass(frozen=True)
class AugmentPolicy:
    """What a configuration's augmentation keys ask for (see the module docstring)."""

    kind: str
    subpolicies: tuple[tuple[Operation, Operation], ...] = ()
    n_ops: int = 2
    magnitude: int = 9

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AugmentPolicy | None:
        """The policy of ``config``, or ``None`` when it has no augmentation keys.

        Raises:
            ConfigError: naming the key and value at fault (an unknown policy or operation, a
                probability or magnitude out of range, a missing or stray key).
        """
        keys = [k for k in config if is_augment_key(k)]
        if not keys:
            return None
        if AUGMENT_KEY not in config:
            raise ConfigError(
                f"augmentation key {keys[0]!r} without {AUGMENT_KEY!r}; set {AUGMENT_KEY}: "
                f"one of {', '.join(POLICIES)}"
            )
        kind = config[AUGMENT_KEY]
        if kind not in POLICIES:
            raise ConfigError(
                f"{AUGMENT_KEY} must be one of {', '.join(POLICIES)}, got {kind!r}."
                + (did_you_mean(kind, POLICIES) if isinstance(kind, str) else "")
            )
        used = {AUGMENT_KEY}
        if kind == "randaugment":
            used.update(_RA_KEYS)
        stray = [
            k
            for k in keys
            if k not in used and not (kind == "autoaugment" and _SUB_KEY.fullmatch(k))
        ]
        if stray:
            raise ConfigError(
                f"augmentation key {stray[0]!r} does not apply to {AUGMENT_KEY}={kind!r}"
                + ("" if _SUB_KEY.fullmatch(stray[0]) or stray[0] in _RA_KEYS else " (unknown key)")
            )
        if kind == "randaugment":
            n = _number(config, "randaugment_n", 2, 1, len(OPERATIONS), integer=True)
            m = _number(config, "randaugment_m", 9, 0, RANDAUGMENT_LEVELS, integer=True)
            return cls(kind, n_ops=int(n), magnitude=int(m))
        if kind == "autoaugment":
            return cls(kind, subpolicies=_subpolicies(config))
        return cls(kind)

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {AUGMENT_KEY: self.kind}
        if self.kind == "randaugment":
            out.update(randaugment_n=self.n_ops, randaugment_m=self.magnitude)
        for i, sub in enumerate(self.subpolicies, start=1):
            for j, op in enumerate(sub, start=1):
                out[f"subpolicy{i}_op{j}"] = op.name
                out[f"subpolicy{i}_prob{j}"] = op.probability
                out[f"subpolicy{i}_mag{j}"] = op.magnitude
        return out

    def describe(self) -> str:
        """One line, e.g. ``autoaugment: (rotate 0.7 2, translate_x 0.3 9), ...``."""
        if self.kind == "randaugment":
            return f"randaugment: N={self.n_ops}, M={self.magnitude}"
        if self.kind != "autoaugment":
            return self.kind
        subs = [
            "(" + ", ".join(f"{o.name} {o.probability:g} {o.magnitude:g}" for o in sub) + ")"
            for sub in self.subpolicies
        ]
        return "autoaugment: " + ", ".join(subs)


def _number(
    config: Mapping[str, Any], key: str, default: float, lo: float, hi: float, *, integer: bool
) -> float:
    value = config.get(key, default)
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and not math.isfinite(float(value)):
        ok = False
    if ok and integer and float(value) != int(value):
        ok = False
    if not ok or not lo <= float(value) <= hi:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _subpolicies(config: Mapping[str, Any]) -> tuple[tuple[Operation, Operation], ...]:
    indexes = sorted({int(m.group(1)) for k in config if (m := _SUB_KEY.fullmatch(str(k)))})
    if not indexes:
        raise ConfigError(
            f"{AUGMENT_KEY}=autoaugment needs sub-policies: subpolicy1_op1, subpolicy1_prob1, "
            "subpolicy1_mag1, subpolicy1_op2, ... (see hporl.augment.autoaugment_space)"
        )
    want = list(range(1, len(indexes) + 1))
    if indexes != want:
        missing = sorted(set(want) - set(indexes))
        raise ConfigError(
            f"sub-policies are numbered 1..N without gaps; subpolicy{missing[0]} is missing "
            f"(found {', '.join(map(str, indexes))})"
        )
    out = []
    for i in indexes:
        ops = []
        for j in (1, 2):
            names = {part: f"subpolicy{i}_{part}{j}" for part in ("op", "prob", "mag")}
            for key in names.values():
                if key not in config:
                    raise ConfigError(f"sub-policy {i} is missing {key!r}")
            name = config[names["op"]]
            if name not in OPERATIONS:
                raise ConfigError(
                    f"{names['op']}: unknown operation {name!r}; operations: "
                    f"{', '.join(OPERATIONS)}."
                    + (did_you_mean(name, OPERATIONS) if isinstance(name, str) else "")
                )
            p = _number(config, names["prob"], 0.0, 0.0, 1.0, integer=False)
            m = _number(config, names["mag"], 0.0, 0.0, MAX_MAGNITUDE, integer=False)
            ops.append(Operation(name, p, m))
        out.append((ops[0], ops[1]))
    return tuple(out)


# -- checks before training -----------------------------------------------------------------------
def _image_error(task: Any, what: str) -> TaskError | None:
    kind = getattr(task, "input_kind", None)
    shape = tuple(getattr(task, "input_shape", ()))
    if kind == "image" and len(shape) == 3:
        return None
    name = getattr(task, "name", "?")
    return TaskError(
        f"{what} needs an image task (inputs of shape (C, H, W)); task {name!r} has "
        f"{kind or 'unknown'} inputs of shape {shape}"
    )


def check_config(config: Mapping[str, Any], task: Any) -> AugmentPolicy | None:
    """The augmentation policy of ``config`` for ``task`` (``None`` without augmentation keys).

    Raises:
        ConfigError: a bad augmentation key or value, or kornia missing.
        TaskError: augmentation keys on a task whose inputs are not images.
    """
    policy = AugmentPolicy.from_config(config)
    if policy is None:
        return None
    err = _image_error(task, f"augmentation ({AUGMENT_KEY}={policy.kind!r})")
    if err is not None:
        raise err
    if policy.kind != "none":
        _kornia()
    return policy


def check_space(space: SearchSpace, task: Any) -> None:
    """Refuse, before any training, a space with augmentation parameters for a non-image task.

    Raises:
        TaskError: naming the parameters and the task.
        ConfigError: kornia is missing.
    """
    names = [n for n in space.names if is_augment_key(n)]
    if not names:
        return
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    err = _image_error(task, f"a search space with augmentation parameters ({shown})")
    if err is not None:
        raise err
    _kornia()


# -- the space ---------------------------------------------------------------------------------
def autoaugment_space(
    n_subpolicies: int = DEFAULT_SUBPOLICIES, *, policies: tuple[str, ...] | list[str] = POLICIES
) -> SearchSpace:
    """The ``autoaugment`` search space with ``n_subpolicies`` sub-policies (the built-in has 5).

    ``augment`` chooses among ``policies`` (default all: ``none``, ``trivialaugment``,
    ``randaugment`` with ``randaugment_n`` in 1..3 and ``randaugment_m`` in 0..30, and
    ``autoaugment`` with each sub-policy's two operations, probabilities and magnitudes); a
    single policy makes ``augment`` fixed, e.g. ``policies=["autoaugment"]`` to search AutoAugment
    policies only. Defaults: no augmentation (else the first of ``policies``); RandAugment's N=2,
    M=9; AutoAugment's reduced-CIFAR-10 policy (its first five sub-policies, repeated beyond).

    Raises:
        ConfigError: ``n_subpolicies`` outside 1..50, or an unknown or repeated policy.
    """
    from hporl.space import SearchSpace

    if (
        not isinstance(n_subpolicies, int)
        or isinstance(n_subpolicies, bool)
        or not 1 <= n_subpolicies <= 50
    ):
        raise ConfigError(f"n_subpolicies must be an integer in [1, 50], got {n_subpolicies!r}")
    policies = list(policies)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies or len(set(policies)) != len(policies):
        raise ConfigError(
            f"policies must be distinct names among {', '.join(POLICIES)}, got {policies!r}."
            + (
                did_you_mean(unknown[0], POLICIES)
                if unknown and isinstance(unknown[0], str)
                else ""
            )
        )
    default = policies == list(POLICIES) and n_subpolicies == DEFAULT_SUBPOLICIES
    return SearchSpace.from_dict(
        _space_dict(n_subpolicies, policies),
        name="autoaugment" if default else f"autoaugment{n_subpolicies}",
    )


def _space_dict(n: int, policies: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {
        AUGMENT_KEY: {
            "type": "categorical",
            "choices": policies,
            "default": "none" if "none" in policies else policies[0],
            "description": "data augmentation of training batches (image tasks only)",
        }
        if len(policies) > 1
        else {"type": "fixed", "value": policies[0]},
    }
    if "randaugment" in policies:
        params["randaugment_n"] = {
            "type": "int",
            "low": 1,
            "high": 3,
            "default": 2,
            "when": {AUGMENT_KEY: ["randaugment"]},
            "description": "RandAugment: operations per image",
        }
        params["randaugment_m"] = {
            "type": "int",
            "low": 0,
            "high": RANDAUGMENT_LEVELS,
            "default": 9,
            "when": {AUGMENT_KEY: ["randaugment"]},
            "description": "RandAugment: magnitude on the 0-30 scale",
        }
    if "autoaugment" not in policies:
        return {"parameters": params}
    when = {AUGMENT_KEY: ["autoaugment"]}
    for i in range(1, n + 1):
        default = _CIFAR10[(i - 1) % len(_CIFAR10)]
        for j in (1, 2):
            op, p, m = default[j - 1]
            params[f"subpolicy{i}_op{j}"] = {
                "type": "categorical",
                "choices": list(OPERATIONS),
                "default": op,
                "when": when,
            }
            params[f"subpolicy{i}_prob{j}"] = {
                "type": "categorical",
                "choices": list(PROBABILITIES),
                "default": p,
                "when": when,
            }
            params[f"subpolicy{i}_mag{j}"] = {
                "type": "categorical",
                "choices": list(MAGNITUDES),
                "default": m,
                "when": when,
            }
    return {"parameters": params}


# -- operations on [0, 1] images ------------------------------------------------------------------
def _signed(strength: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    sign = torch.randint(0, 2, strength.shape, generator=generator) * 2 - 1
    return strength * sign.to(strength)


def _cutout(x: torch.Tensor, strength: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    b, _, h, w = x.shape
    side = torch.ceil(0.6 * strength * min(h, w))  # >= 1 pixel for any strength > 0
    cy = (torch.rand(b, generator=gen) * h).to(x)
    cx = (torch.rand(b, generator=gen) * w).to(x)
    ys = torch.arange(h, dtype=x.dtype, device=x.device) + 0.5
    xs = torch.arange(w, dtype=x.dtype, device=x.device) + 0.5
    inside_y = (ys[None, :] - cy[:, None]).abs() <= side[:, None] / 2
    inside_x = (xs[None, :] - cx[:, None]).abs() <= side[:, None] / 2
    mask = inside_y[:, :, None] & inside_x[:, None, :]
    # the nearest pixel to the centre always belongs to the patch
    mask[
        torch.arange(b, device=x.device), cy.long().clamp(max=h - 1), cx.long().clamp(max=w - 1)
    ] = True
    return torch.where(mask[:, None], torch.full_like(x, 0.5), x)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel of each image over 256 levels, by the textbook
    formula ``(cdf(v) - cdf_min) / (n - cdf_min)``. (kornia's and PIL's ``equalize`` leave a
    channel of fewer than 256 pixels unchanged, which is every image of an 8x8 or 12x12 task.)"""
    b, c, h, w = x.shape
    levels = (x.reshape(b * c, h * w) * 255).round().long().clamp(0, 255)
    hist = torch.zeros(b * c, 256, dtype=x.dtype, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=x.dtype))
    cdf = hist.cumsum(1)
    cdf_min = cdf.gather(1, levels.min(1, keepdim=True).values)
    lut = ((cdf - cdf_min) / (h * w - cdf_min).clamp_min(1)).clamp(0.0, 1.0)
    out = lut.gather(1, levels).reshape(b, c, h, w)
    constant = (h * w - cdf_min).reshape(b, c, 1, 1) == 0
    return torch.where(constant, x, out)


def _warp(x: torch.Tensor, kinds: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One affine warp for a batch whose images each get one geometric operation: ``kinds``
    indexes :data:`_GEOMETRIC`, ``v`` is the signed strength. Rotation and shear are about the
    image centre; uncovered pixels are 0."""
    b, _, h, w = x.shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    m = torch.eye(3, dtype=x.dtype, device=x.device).repeat(b, 1, 1)
    angle = torch.deg2rad(30.0 * v)
    cos, sin = torch.cos(angle), torch.sin(angle)
    shear = 0.3 * v
    rot, sx, sy, tx, ty = (kinds == k for k in range(len(_GEOMETRIC)))
    m[:, 0, 0] = torch.where(rot, cos, m[:, 0, 0])
    m[:, 0, 1] = torch.where(rot, -sin, torch.where(sx, shear, m[:, 0, 1]))
    m[:, 1, 0] = torch.where(rot, sin, torch.where(sy, shear, m[:, 1, 0]))
    m[:, 1, 1] = torch.where(rot, cos, m[:, 1, 1])
    zero = torch.zeros_like(v)
    m[:, 0, 2] = torch.where(
        rot,
        cx - cos * cx + sin * cy,
        torch.where(sx, -shear * cy, torch.where(tx, 0.45 * w * v, zero)),
    )
    m[:, 1, 2] = torch.where(
        rot,
        cy - sin * cx - cos * cy,
        torch.where(sy, -shear * cx, torch.where(ty, 0.45 * h * v, zero)),
    )
    G = _kornia().geometry.transform
    return G.warp_affine(x, m[:, :2], (h, w), align_corners=True).clamp(0.0, 1.0)


def apply_operation(
    images: torch.Tensor,
    name: str,
    strength: float | torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply operation ``name`` to every image of a ``(B, C, H, W)`` batch in [0, 1].

    ``strength`` in [0, 1] (a number, or one per image) scales the operation to its extreme;
    signed operations draw a random sign per image from ``generator``. Returns a new tensor of the
    same shape and dtype, in [0, 1].
    """
    if name not in OPERATIONS:
        raise ConfigError(f"unknown operation {name!r}; operations: {', '.join(OPERATIONS)}")
    x = images
    b = len(x)
    s = torch.as_tensor(strength, dtype=x.dtype, device=x.device).expand(b).clone()
    if name == "identity" or b == 0:
        return x.clone()
    E = _kornia().enhance
    if name == "auto_contrast":
        return E.normalize_min_max(x).clamp(0.0, 1.0)
    if name == "equalize":
        return _equalize(x)
    if name == "invert":
        return 1.0 - x
    if name == "posterize":
        return E.posterize(x, (8 - torch.ceil(4 * s)).long())
    if name == "solarize":
        return E.solarize(x, 1.0 - s)
    if name == "cutout":
        return _cutout(x, s, generator)
    if name in _GEOMETRIC:
        kinds = torch.full((b,), _GEOMETRIC.index(name), device=x.device)
        return _warp(x, kinds, _signed(s, generator))
    v = _signed(s, generator)
    factor = 1.0 + 0.9 * v
    if name == "contrast":  # PIL's Contrast: blend with the image's mean
        return E.adjust_contrast_with_mean_subtraction(x, factor)
    if name == "brightness":  # PIL's Brightness: blend with black, i.e. scale
        return E.adjust_contrast(x, factor)
    return E.sharpness(x, factor)


def _plan(
    policy: AugmentPolicy, b: int, gen: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per slot (operations applied in order): each image's operation index, strength, and
    whether it is applied."""
    n_ops = len(OPERATIONS)
    slots = []
    if policy.kind == "trivialaugment":
        op = torch.randint(0, n_ops, (b,), generator=gen)
        strength = (
            torch.randint(0, RANDAUGMENT_LEVELS + 1, (b,), generator=gen) / RANDAUGMENT_LEVELS
        )
        slots.append((op, strength.float(), torch.ones(b, dtype=torch.bool)))
    elif policy.kind == "randaugment":
        strength = torch.full((b,), policy.magnitude / RANDAUGMENT_LEVELS)
        for _ in range(policy.n_ops):
            op = torch.randint(0, n_ops, (b,), generator=gen)
            slots.append((op, strength, torch.ones(b, dtype=torch.bool)))
    elif policy.kind == "autoaugment":
        k = len(policy.subpolicies)
        chosen = torch.randint(0, k, (b,), generator=gen)
        for j in (0, 1):
            ops = [sub[j] for sub in policy.subpolicies]
            op_table = torch.tensor([OPERATIONS.index(o.name) for o in ops])
            p_table = torch.tensor([o.probability for o in ops])
            s_table = torch.tensor([o.magnitude / MAX_MAGNITUDE for o in ops])
            coin = torch.rand(b, generator=gen)
            slots.append((op_table[chosen], s_table[chosen], coin < p_table[chosen]))
    return slots


@torch.no_grad()
def augment_images(
    images: torch.Tensor, policy: AugmentPolicy, *, generator: torch.Generator
) -> torch.Tensor:
    """Augment a ``(B, C, H, W)`` batch of images in [0, 1] with ``policy``, per image."""
    x = images.clone()
    if policy.kind == "none" or len(x) == 0:
        return x
    for slot in _plan(policy, len(x), generator):
        op, strength, applied = (t.to(x.device) for t in slot)
        # strength 0 leaves an image unchanged, whatever the operation
        applied = applied & ((strength > 0) | _NO_MAGNITUDE_MASK.to(x.device)[op])
        geometric = applied & _GEOMETRIC_MASK.to(x.device)[op]
        if geometric.any():  # all geometric operations of the slot in one warp
            idx = geometric.nonzero().squeeze(1)
            kinds = _GEOMETRIC_INDEX.to(x.device)[op[idx]]
            x[idx] = _warp(x[idx], kinds, _signed(strength[idx], generator))
        counts = torch.bincount(op[applied & ~geometric], minlength=len(OPERATIONS)).tolist()
        for k, name in enumerate(OPERATIONS):
            if counts[k] and name != "identity":
                idx = (applied & (op == k)).nonzero().squeeze(1)
                x[idx] = apply_operation(x[idx], name, strength[idx], generator=generator)
    return x


# -- on a task's training batches -------------------------------------------------------------------
class Augmenter:
    """Augments training batches of one task's standardised images with a policy.

    Each channel is mapped to [0, 1] by ``low`` and ``high`` (the train split's per-channel
    range), augmented, and mapped back. Random draws come from the augmenter's own generator,
    seeded with ``seed``: the same seed gives the same augmented batches.
    """

    def __init__(
        self, policy: AugmentPolicy, *, low: torch.Tensor, high: torch.Tensor, seed: int = 0
    ) -> None:
        self.policy = policy
        self.low = low.reshape(1, -1, 1, 1).float()
        self.scale = (high.reshape(1, -1, 1, 1).float() - self.low).clamp_min(1e-8)
        state = np.random.SeedSequence([int(seed), 0xA06]).generate_state(1)[0]
        self.generator = torch.Generator().manual_seed(int(state))

    @classmethod
    def for_task(cls, config: Mapping[str, Any], task: Any, *, seed: int = 0) -> Augmenter | None:
        """The augmenter of ``config`` on ``task``; ``None`` when there is nothing to apply.

        Raises:
            ConfigError, TaskError: as :func:`check_config`.
        """
        policy = check_config(config, task)
        if policy is None or policy.kind == "none":
            return None
        X = task.X_train
        flat = X.transpose(0, 1).reshape(X.shape[1], -1)
        return cls(policy, low=flat.min(1).values, high=flat.max(1).values, seed=seed)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        low, scale = self.low.to(batch.device), self.scale.to(batch.device)
        x = ((batch.detach().float() - low) / scale).clamp(0.0, 1.0)
        x = augment_images(x, self.policy, generator=self.generator)
        return (x * scale + low).to(batch.dtype)


def op_counts(configs: list[Mapping[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """How often ``configs`` choose each ``augment`` policy, and each operation in their
    AutoAugment sub-policies; both most frequent first."""
    kinds: dict[str, int] = {}
    ops: dict[str, int] = {}
    for c in configs:
        if AUGMENT_KEY not in c:
            continue
        kinds[str(c[AUGMENT_KEY])] = kinds.get(str(c[AUGMENT_KEY]), 0) + 1
        if c[AUGMENT_KEY] != "autoaugment":
            continue
        for k, v in c.items():
            m = _SUB_KEY.fullmatch(str(k))
            if m and m.group(2) == "op":
                ops[str(v)] = ops.get(str(v), 0) + 1

    def ordered(d: dict[str, int]) -> dict[str, int]:
        return dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))

    return ordered(kinds), ordered(ops)

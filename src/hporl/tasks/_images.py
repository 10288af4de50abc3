"""Small image data sets generated offline (numpy, and the fonts that ship with matplotlib).

Each generator is deterministic (a fixed numpy seed) and returns ``(X, y)`` with ``X`` of shape
``(n, C, 16, 16)`` in [0, 1] and integer labels. Images are drawn at 64x64 and averaged down to
16x16 (anti-aliased), then given a random intensity, background and pixel noise. Used by the
built-in tasks ``shapes``, ``shapes_rgb``, ``gratings``, ``glyph_letters``, ``glyph_lower`` and
``glyph_digits``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["glyphs", "gratings", "shapes"]

SIZE = 16
_SUPER = 4  # drawn at SIZE * _SUPER, then averaged down
SHAPES = ("disk", "ring", "square", "triangle", "plus", "cross")
# Fonts shipped with matplotlib (DejaVu, STIX, Computer Modern): 20 faces.
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
)


def _down(img: np.ndarray) -> np.ndarray:
    """Average ``_SUPER`` x ``_SUPER`` blocks of the last two axes."""
    *lead, h, w = img.shape
    return img.reshape(*lead, h // _SUPER, _SUPER, w // _SUPER, _SUPER).mean(axis=(-3, -1))


def _finish(masks: np.ndarray, rng: np.random.Generator, colours: bool, noise: float) -> np.ndarray:
    """Masks (n, 64, 64) in [0, 1] -> images (n, C, 16, 16) with random fore/background and noise."""
    n = len(masks)
    m = _down(masks)[:, None]  # (n, 1, 16, 16)
    if colours:
        bg = rng.uniform(0.0, 0.45, size=(n, 3, 1, 1))
        fg = rng.uniform(0.55, 1.0, size=(n, 3, 1, 1))
        swap = rng.random((n, 3, 1, 1)) < 0.5  # a dark shape on a light ground for some channels
        bg, fg = np.where(swap, fg, bg), np.where(swap, bg, fg)
    else:
        bg = rng.uniform(0.0, 0.3, size=(n, 1, 1, 1))
        fg = rng.uniform(0.6, 1.0, size=(n, 1, 1, 1))
    x = bg + (fg - bg) * m
    x = x + rng.normal(0.0, noise, size=x.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


@functools.cache
def shapes(n: int = 1000, *, colours: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Filled or outlined geometric shapes (:data:`SHAPES`, 6 classes) at a random position,
    size and rotation; ``colours`` gives RGB images with random colours."""
    rng = np.random.default_rng(seed + (100 if colours else 0))
    side = SIZE * _SUPER
    g = (np.arange(side) + 0.5) / side * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = np.meshgrid(g, g, indexing="ij")
    y = rng.integers(0, len(SHAPES), size=n)
    masks = np.zeros((n, side, side))
    for i, label in enumerate(y):
        kind = SHAPES[label]
        r = rng.uniform(0.4, 0.75)
        cy, cx = rng.uniform(-0.9 + r, 0.9 - r, size=2) if r < 0.9 else (0.0, 0.0)
        phi = rng.uniform(0, 2 * np.pi)
        if kind in ("plus", "cross"):  # plus and cross differ by 45 degrees
            phi = np.deg2rad(rng.uniform(-15, 15) + (45 if kind == "cross" else 0))
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(phi) + dy * np.sin(phi)
        v = -dx * np.sin(phi) + dy * np.cos(phi)
        d = np.hypot(dx, dy)
        if kind == "disk":
            mask = d < r
        elif kind == "ring":
            mask = (d < r) & (d > r * rng.uniform(0.45, 0.7))
        elif kind == "square":
            mask = (np.abs(u) < 0.75 * r) & (np.abs(v) < 0.75 * r)
        elif kind == "triangle":
            angles = phi + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
            mask = np.ones_like(d, dtype=bool)
            for a in angles:  # three half-planes
                mask &= dx * np.cos(a) + dy * np.sin(a) < 0.5 * r
        else:
            w = r * rng.uniform(0.18, 0.3)
            mask = ((np.abs(u) < w) & (np.abs(v) < r)) | ((np.abs(v) < w) & (np.abs(u) < r))
        masks[i] = mask
    return _finish(masks, rng, colours, noise=0.08), y


@functools.cache
def gratings(n: int = 1000, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy sinusoidal gratings in a Gaussian window; the class is the orientation (0, 45, 90 or
    135 degrees, each jittered by up to 15). Rotating an image by 30 degrees nearly changes its
    class: a task on which strong geometric augmentation hurts."""
    rng = np.random.default_rng(seed + 200)
    g = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    yy, xx = np.meshgrid(g, g, indexing="ij")
    y = rng.integers(0, 4, size=n)
    theta = np.deg2rad(45.0 * y + rng.uniform(-15, 15, size=n))[:, None, None]
    freq = rng.uniform(1.5, 3.5, size=n)[:, None, None] * np.pi
    phase = rng.uniform(0, 2 * np.pi, size=n)[:, None, None]
    cy, cx = (rng.uniform(-0.4, 0.4, size=(2, n)))[:, :, None, None]
    sigma = rng.uniform(0.4, 0.9, size=n)[:, None, None]
    wave = np.cos(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    window = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    contrast = rng.uniform(0.1, 0.35, size=n)[:, None, None]
    x = 0.5 + contrast * wave * window + rng.normal(0.0, 0.2, size=wave.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32)[:, None], y


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.cache
def _glyph_bitmaps(chars: str) -> list[list[np.ndarray]]:
    """[font][char] -> the glyph's anti-aliased bitmap in [0, 1] (tightly cropped)."""
    from matplotlib.ft2font import FT2Font

    out = []
    for name in FONTS:
        font = FT2Font(str(_font_dir() / name))
        row = []
        for ch in chars:
            font.set_size(48, 72)
            font.set_text(ch, 0.0)
            font.draw_glyphs_to_bitmap(antialiased=True)
            img = np.asarray(font.get_image(), dtype=np.float64) / 255.0
            rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
            row.append(img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        out.append(row)
    return out


@functools.cache
def glyphs(chars: str, n: int = 1000, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Characters of ``chars`` (one class each) rendered in the fonts that ship with matplotlib,
    with a random affine jitter (rotation up to 12 degrees, scale, shear, shift)."""
    from scipy.ndimage import affine_transform

    rng = np.random.default_rng(seed + sum(map(ord, chars)))
    bitmaps = _glyph_bitmaps(chars)
    side = SIZE * _SUPER
    y = rng.integers(0, len(chars), size=n)
    fonts = rng.integers(0, len(FONTS), size=n)
    masks = np.zeros((n, side, side))
    for i in range(n):
        glyph = bitmaps[fonts[i]][y[i]]
        target = rng.uniform(0.55, 0.8) * side  # the glyph's larger side, in output pixels
        scale = max(glyph.shape) / target  # input pixels per output pixel
        theta = np.deg2rad(rng.uniform(-12, 12))
        shear = rng.uniform(-0.15, 0.15)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        matrix = scale * rot @ np.array([[1.0, 0.0], [shear, 1.0]])
        shift = rng.uniform(-0.08, 0.08, size=2) * side
        centre_out = np.array([side / 2, side / 2]) + shift
        centre_in = np.array(glyph.shape) / 2
        offset = centre_in - matrix @ centre_out
        masks[i] = affine_transform(
            glyph, matrix, offset=offset, output_shape=(side, side), order=1
        )
    return _finish(np.clip(masks, 0, 1), rng, colours=False, noise=0.1), y

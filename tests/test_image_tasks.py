"""The generated image tasks: shapes, determinism, the images suite, a model that learns them."""

from __future__ import annotations

import numpy as np
import pytest

from hporl import TorchBackend
from hporl.tasks import FEATURE_NAMES, _images, available, builtin, suites

GENERATED = ["shapes", "shapes_rgb", "gratings", "glyph_letters", "glyph_lower", "glyph_digits"]


def test_images_suite_lists_the_generated_tasks():
    assert suites()["images"] == ["digits_image", *GENERATED]
    assert set(GENERATED) <= set(suites()["all"]) and set(GENERATED) <= set(available())


@pytest.mark.parametrize("name", GENERATED)
def test_generated_task_shapes_and_classes(name):
    task = builtin(name)
    channels = 3 if name == "shapes_rgb" else 1
    assert task.input_kind == "image" and task.input_shape == (channels, 16, 16)
    n_classes = {"shapes": 6, "shapes_rgb": 6, "gratings": 4}.get(name, 10)
    assert task.n_outputs == n_classes
    assert len(task.X_train) + len(task.X_val) + len(task.X_test) == 1000
    assert task.features()[FEATURE_NAMES.index("input_image")] == 1.0
    counts = np.bincount(task.y_train.numpy(), minlength=n_classes)
    assert counts.min() > 0.5 * counts.mean()  # roughly balanced


@pytest.mark.parametrize(
    "make",
    [
        lambda: _images.shapes.__wrapped__(200),
        lambda: _images.shapes.__wrapped__(200, colours=True),
        lambda: _images.gratings.__wrapped__(200),
        lambda: _images.glyphs.__wrapped__("ABC", 200),
    ],
)
def test_generators_are_deterministic_and_in_range(make):
    (X1, y1), (X2, y2) = make(), make()
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2)
    assert X1.dtype == np.float32 and X1.min() >= 0.0 and X1.max() <= 1.0
    assert X1.shape[-2:] == (16, 16)


def test_every_font_renders_every_glyph():
    bitmaps = _images._glyph_bitmaps("ABCDEFGHIJabcdefghij0123456789")
    assert len(bitmaps) == len(_images.FONTS)
    assert all(b.size > 20 and b.max() > 0.5 for row in bitmaps for b in row)


def test_a_few_epochs_learn_a_generated_task():
    result = TorchBackend(num_threads=1).evaluate(builtin("glyph_digits"), {"lr": 3e-3}, epochs=4)
    assert result.ok and result.best_metric > 0.4  # chance is 0.1

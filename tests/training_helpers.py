"""A small, fast setup for the training example's tests (conftest puts ``examples/`` on ``sys.path``)."""

from __future__ import annotations

import dataclasses
import pathlib

from jdw.training import config, data

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def tiny_config(**overrides) -> config.Config:
    """MobileNetV1 at width 0.25 on 16x16 digits: compiles in seconds."""
    options = dict(model="mobilenet_v1", width=0.25, image_size=16, batch_size=32, epochs=2, warmup_epochs=0.5)
    return config.config_for("digits", **{**options, **overrides})


def tiny_digits(train: int = 256, test: int = 64) -> data.Dataset:
    full = data.resize(data.load_digits(), 16)
    return dataclasses.replace(
        full,
        train_images=full.train_images[:train],
        train_labels=full.train_labels[:train],
        test_images=full.test_images[:test],
        test_labels=full.test_labels[:test],
    )

"""from_keras: Keras applications built offline (weights=None, perturbed batch-norm statistics) give the same logits."""

from __future__ import annotations

import os
import re

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported

import jax
import keras
import numpy as np
import pytest
from flax import nnx

import jdw
from jdw.models import MobileNetV1, MobileNetV2, MobileNetV3Large, MobileNetV3Small

CASES = {
    "v1_alpha0.5_depth2": (keras.applications.MobileNet, dict(alpha=0.5, depth_multiplier=2), MobileNetV1),
    "v2_alpha0.35": (keras.applications.MobileNetV2, dict(alpha=0.35), MobileNetV2),
    "v2_alpha1.3_notop": (keras.applications.MobileNetV2, dict(alpha=1.3, include_top=False), MobileNetV2),
    "v3small_alpha0.75": (keras.applications.MobileNetV3Small, dict(alpha=0.75), MobileNetV3Small),
    "v3large_notop": (keras.applications.MobileNetV3Large, dict(include_top=False), MobileNetV3Large),
    "v3large_minimalistic_nopreprocessing": (
        keras.applications.MobileNetV3Large,
        dict(minimalistic=True, include_preprocessing=False, classes=10),
        MobileNetV3Large,
    ),
}


def _perturb_batch_norms(model, rng):
    """Random statistics and affine parameters, so inference-mode normalisation is exercised."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0.0, 0.2, beta.shape),
                    rng.normal(0.0, 0.2, mean.shape),
                    rng.uniform(0.5, 2.0, var.shape),
                ]
            )


@pytest.mark.filterwarnings("ignore::UserWarning:keras.*")
@pytest.mark.parametrize("name", sorted(CASES))
def test_from_keras_reproduces_the_logits(name):
    rng = np.random.default_rng(0)
    application, kwargs, cls = CASES[name]
    size = 64 if application is not keras.applications.MobileNet else 96
    kwargs = dict(weights=None, input_shape=(size, size, 3), **kwargs)
    if kwargs.get("include_top", True):
        kwargs["classifier_activation"] = None
    keras_model = application(**kwargs)
    _perturb_batch_norms(keras_model, rng)
    x = rng.uniform(0.0, 255.0, (2, size, size, 3)).astype(np.float32)
    keras_rescales = cls in (MobileNetV3Small, MobileNetV3Large) and kwargs.get("include_preprocessing", True)
    if not keras_rescales:  # otherwise Keras's own Rescaling layer takes pixels in [0, 255]
        x = x / 127.5 - 1.0
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):  # Keras's own ops
        expected = keras_model.predict(x, verbose=0)
    model = jdw.models.from_keras(keras_model)
    assert type(model) is cls
    if "alpha" in kwargs:
        assert model.width == kwargs["alpha"]
    actual = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))
    assert actual.shape == expected.shape
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error < 1e-4, error


def test_not_a_mobilenet():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.DepthwiseConv2D(3)(inputs), name="tiny")
    with pytest.raises(
        ValueError, match=re.escape("from_keras: 'tiny' has 1 depthwise layers; expected a Keras MobileNet")
    ):
        jdw.models.from_keras(model)

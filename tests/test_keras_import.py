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
from jdw.models import (
    ConvNeXtTiny,
    EfficientNetB0,
    EfficientNetB1,
    EfficientNetV2S,
    MobileNetV1,
    MobileNetV2,
    MobileNetV3Large,
    MobileNetV3Small,
    Xception,
)

# One or two per family and every include_top/preprocessing choice. Left out for CI's time: width
# multipliers above 1 and MobileNetV3Small (the same blocks and names as MobileNetV3Large).
CASES = {
    "v1_alpha0.5_depth2": (keras.applications.MobileNet, dict(alpha=0.5, depth_multiplier=2), MobileNetV1),
    "v2_alpha0.35": (keras.applications.MobileNetV2, dict(alpha=0.35), MobileNetV2),
    "v3large_notop": (keras.applications.MobileNetV3Large, dict(include_top=False), MobileNetV3Large),
    "v3large_minimalistic_nopreprocessing": (
        keras.applications.MobileNetV3Large,
        dict(minimalistic=True, include_preprocessing=False, classes=10),
        MobileNetV3Large,
    ),
    "efficientnet_b0": (keras.applications.EfficientNetB0, dict(classes=10), EfficientNetB0),
    "efficientnet_b1_notop": (keras.applications.EfficientNetB1, dict(include_top=False), EfficientNetB1),
    "efficientnet_v2s_nopreprocessing_notop": (
        keras.applications.EfficientNetV2S,
        dict(include_top=False, include_preprocessing=False),
        EfficientNetV2S,
    ),
    "convnext_tiny": (keras.applications.ConvNeXtTiny, dict(classes=10), ConvNeXtTiny),
    "convnext_tiny_nopreprocessing_notop": (
        keras.applications.ConvNeXtTiny,
        dict(include_top=False, include_preprocessing=False),
        ConvNeXtTiny,
    ),
    "xception": (keras.applications.Xception, dict(classes=10), Xception),
}
# The applications whose built-in preprocessing takes pixels in [0, 255] (the others take [-1, 1]).
_RAW_PIXELS = (MobileNetV3Small, MobileNetV3Large, EfficientNetB0, EfficientNetB1, EfficientNetV2S, ConvNeXtTiny)


def _flat(model):
    for layer in model.layers:
        yield from _flat(layer) if hasattr(layer, "layers") else (layer,)


def _perturb_batch_norms(model, rng):
    """Random statistics and affine parameters, so inference-mode normalisation is exercised; layer norms,
    ConvNeXt's layer scales (1e-6 at initialisation) and EfficientNet's input normalisation too.

    Scales stay at most 1 and variances at least 1: with larger ones a 40-block EfficientNetV2 grows its
    activations about 1.5x per block, and float32 rounding differences (any two summation orders) with them,
    to 0.3 relative at the logits, while each block still agrees to 3e-7.
    """
    for layer in _flat(model):
        if isinstance(layer, keras.layers.LayerNormalization):
            gamma, beta = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.0, gamma.shape), rng.normal(0.0, 0.2, beta.shape)])
        elif type(layer).__name__ == "LayerScale":
            layer.set_weights([rng.uniform(0.2, 0.5, w.shape) for w in layer.get_weights()])
        elif isinstance(layer, keras.layers.Normalization) and layer.get_weights():
            mean, var, *count = layer.get_weights()
            layer.set_weights([rng.uniform(100, 150, mean.shape), rng.uniform(2000, 5000, var.shape), *count])
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.0, gamma.shape),
                    rng.normal(0.0, 0.2, beta.shape),
                    rng.normal(0.0, 0.2, mean.shape),
                    rng.uniform(1.0, 2.0, var.shape),
                ]
            )


@pytest.mark.filterwarnings("ignore::UserWarning:keras.*")
@pytest.mark.parametrize("name", sorted(CASES))
def test_from_keras_reproduces_the_logits(name):
    rng = np.random.default_rng(0)
    application, kwargs, cls = CASES[name]
    size = {keras.applications.MobileNet: 96, keras.applications.Xception: 71}.get(application, 64)
    kwargs = dict(weights=None, input_shape=(size, size, 3), **kwargs)
    if kwargs.get("include_top", True):
        kwargs["classifier_activation"] = None
    with jax.numpy_rank_promotion("allow"):  # Keras's own ops
        keras_model = application(**kwargs)
    _perturb_batch_norms(keras_model, rng)
    x = rng.uniform(0.0, 255.0, (2, size, size, 3)).astype(np.float32)
    keras_rescales = cls in _RAW_PIXELS and kwargs.get("include_preprocessing", True)
    if not keras_rescales:  # otherwise Keras's own Rescaling layer takes pixels in [0, 255]
        x = x / 127.5 - 1.0
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):  # Keras's own ops
        expected = keras_model.predict(x, verbose=0)
    model = jdw.models.from_keras(keras_model)
    assert type(model) is cls
    if "alpha" in kwargs:
        assert model.width == kwargs["alpha"]
    assert (model.input_rescaling is not None) == keras_rescales
    trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == trainable
    actual = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))
    assert actual.shape == expected.shape
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error < 1e-4, error


def test_not_a_mobilenet():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.DepthwiseConv2D(3)(inputs), name="tiny")
    with pytest.raises(
        ValueError, match=re.escape("from_keras: no jdw model reproduces the layer shapes of 'tiny' (1 weight layers")
    ):
        jdw.models.from_keras(model)

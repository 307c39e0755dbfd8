"""Build a jdw MobileNet from a Keras application and copy its weights (ImageNet ones included)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdw.models._mobilenet import MobileNet
from jdw.models.mobilenet_v1 import DepthwiseSeparable, MobileNetV1
from jdw.models.mobilenet_v2 import MobileNetV2
from jdw.models.mobilenet_v3 import MobileNetV3Large, MobileNetV3Small
from jdw.nnx import ConvNormAct, DepthwiseConv, InvertedResidual, PointwiseConv, SqueezeExcite

# The four Keras applications differ in their number of depthwise layers.
_BY_DEPTHWISE_COUNT = {13: MobileNetV1, 17: MobileNetV2, 11: MobileNetV3Small, 15: MobileNetV3Large}
# Channel count of the last block at width 1, to estimate the width of a model.
_LAST_BLOCK = {MobileNetV1: 1024, MobileNetV2: 320, MobileNetV3Small: 96, MobileNetV3Large: 160}
_WEIGHT_LAYERS = ("Conv2D", "DepthwiseConv2D", "BatchNormalization", "Dense")


def from_keras(keras_model: Any, *, implementation: str | None = None, dtype: Any = None) -> MobileNet:
    """Builds the jdw MobileNet matching a Keras application and copies its weights.

    Works with ``keras.applications.MobileNet``, ``MobileNetV2``, ``MobileNetV3Small`` and
    ``MobileNetV3Large`` (Keras 3, any backend), any ``alpha`` and ``depth_multiplier``,
    with or without the top and, for V3, with or without the built-in preprocessing
    (which becomes ``input_rescaling``). Batch-norm statistics are copied too, so the
    returned model, in ``eval()`` mode, computes the Keras model's logits (the Keras
    model's output before its ``classifier_activation``). With
    ``keras.applications.MobileNetV2(weights="imagenet")`` this gives ImageNet weights
    wherever Keras can download them.

    Args:
      keras_model: a Keras application model, channels-last.
      implementation: backend of the jdw model's depthwise convolutions.
      dtype: computation dtype of the jdw model.

    Returns:
      A :class:`jdw.models.MobileNetV1`, ``V2``, ``V3Small`` or ``V3Large`` in eval mode.

    Raises:
      ValueError: if the model is not one of those applications or its weights do not
        line up with the jdw model (the message names the layer and both shapes).

    Examples:
      >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")  # before the first keras import
      >>> import keras, jdw
      >>> model = jdw.models.from_keras(keras.applications.MobileNetV2(weights="imagenet"))  # doctest: +SKIP
      >>> logits = model(images / 127.5 - 1.0)  # Keras's MobileNetV2 preprocessing  # doctest: +SKIP
    """
    if not hasattr(keras_model, "layers") or not hasattr(keras_model, "name"):
        raise ValueError(
            f"from_keras: expected a Keras application model (keras.applications.MobileNetV2(...) and the like), "
            f"got {type(keras_model).__name__}"
        )
    layers = [layer for layer in keras_model.layers if type(layer).__name__ in _WEIGHT_LAYERS]
    n_depthwise = sum(type(layer).__name__ == "DepthwiseConv2D" for layer in layers)
    cls = _BY_DEPTHWISE_COUNT.get(n_depthwise)
    if cls is None:
        raise ValueError(
            f"from_keras: {keras_model.name!r} has {n_depthwise} depthwise layers; expected a Keras MobileNet "
            f"application (V1: 13, V2: 17, V3Small: 11, V3Large: 15)"
        )
    shapes = [_comparable(tuple(tuple(w.shape) for w in layer.get_weights())) for layer in layers]
    options = _options(keras_model, layers, cls)
    options.update(implementation=implementation, dtype=dtype)
    for width, extra in _candidates(keras_model, layers, cls):
        abstract = nnx.eval_shape(lambda: cls(**options, width=width, **extra, rngs=nnx.Rngs(0)))  # noqa: B023
        if [_keras_shapes(m) for m in _weight_modules(abstract)] == shapes:
            model = _materialize(abstract)
            for module, layer in zip(_weight_modules(model), layers):
                _copy(module, layer)
            model.eval()
            return model
    raise ValueError(
        f"from_keras: no {cls.__name__} width reproduces the layer shapes of {keras_model.name!r}; "
        f"first layers: {[(layer.name, s) for layer, s in zip(layers[:3], shapes[:3])]}"
    )


def _materialize(abstract: nnx.Module) -> nnx.Module:
    """Concrete zeros for an abstract model whose every weight is about to be overwritten.

    Running the initializers instead would compile one random-number program per parameter
    shape (about 9 s for a MobileNetV3 on CPU), only to throw the numbers away.
    """

    def zeros(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(0) if not x.shape else jax.random.split(jax.random.key(0), x.shape)
        return jnp.zeros(x.shape, x.dtype)

    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(zeros, state))


def _options(keras_model: Any, layers: list, cls: type) -> dict:
    by_type: dict[str, list] = {}
    for layer in keras_model.layers:
        by_type.setdefault(type(layer).__name__, []).append(layer)
    input_shape = keras_model.input_shape
    if getattr(layers[0], "data_format", "channels_last") != "channels_last":
        raise ValueError(f"from_keras: only channels-last Keras models are supported, got {layers[0].data_format}")
    last = layers[-1]
    has_top = type(last).__name__ == "Dense" or (type(last).__name__ == "Conv2D" and last.use_bias)
    options: dict[str, Any] = dict(
        num_classes=int(last.get_weights()[0].shape[-1]) if has_top else None,
        in_features=int(input_shape[-1]),
        norm_epsilon=float(layers[1].epsilon),
    )
    if "Dropout" in by_type:
        options["dropout"] = float(by_type["Dropout"][0].rate)
    if "Rescaling" in by_type:
        rescaling = by_type["Rescaling"][0]
        options["input_rescaling"] = (float(rescaling.scale), float(rescaling.offset))
    return options


def _candidates(keras_model: Any, layers: list, cls: type) -> Iterator[tuple[float, dict]]:
    """Widths (and variants) to try, likeliest first; the layer shapes decide."""
    widths = []
    named = re.search(r"_(\d+\.\d+)_\d+$", keras_model.name)
    if named:
        widths.append(float(named.group(1)))
    widths += [1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4]
    convs = [layer for layer in layers if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")]
    last_block = [layer for layer in convs if not getattr(layer, "use_bias", False)]
    if cls is not MobileNetV1:  # after the last block comes the 1x1 head conv
        last_block = last_block[:-1]
    channels = last_block[-1].get_weights()[0].shape[-1]
    base = _LAST_BLOCK[cls]
    widths += [(channels + delta) / base for delta in (0.0, 0.5, -3.9, 3.9, -2.0, 2.0)]
    extras: list[dict] = [{}]
    if cls is MobileNetV1:
        multiplier = int(convs[1].get_weights()[0].shape[-1])
        extras = [{"depth_multiplier": multiplier}]
    elif cls in (MobileNetV3Small, MobileNetV3Large):
        extras = [{"minimalistic": False}, {"minimalistic": True}]
    seen = set()
    for width in widths:
        for extra in extras:
            key = (round(width, 9), tuple(extra.items()))
            if width > 0 and key not in seen:
                seen.add(key)
                yield width, extra


def _weight_modules(module: nnx.Module) -> Iterator[nnx.Module]:
    """The modules holding weights, in the order Keras creates the matching layers."""
    if isinstance(module, (nnx.Conv, DepthwiseConv, PointwiseConv, nnx.BatchNorm, nnx.Linear)):
        yield module
        return
    if isinstance(module, MobileNet):
        children = [module.stem, *module.blocks, module.head, module.pre_logits, module.classifier]
    elif isinstance(module, ConvNormAct):
        children = [module.conv, module.norm]
    elif isinstance(module, InvertedResidual):
        children = [module.expand, module.depthwise, module.se, module.project]
    elif isinstance(module, SqueezeExcite):
        children = [module.reduce, module.expand]
    elif isinstance(module, DepthwiseSeparable):
        children = [module.depthwise, module.pointwise]
    else:
        raise TypeError(f"from_keras: no Keras counterpart for {type(module).__name__}")
    for child in children:
        if child is not None:
            yield from _weight_modules(child)


def _keras_shapes(module: nnx.Module) -> tuple[tuple[int, ...], ...]:
    """The shapes Keras's matching layer stores its weights in."""
    if isinstance(module, nnx.BatchNorm):
        return (module.scale.shape,) * 4
    kernel = tuple(module.kernel.shape)
    if isinstance(module, DepthwiseConv):
        kernel = (*kernel[:-2], module.in_features, module.depth_multiplier)
    bias = () if module.bias is None else (tuple(module.bias.shape),)
    return _comparable((kernel, *bias))


def _comparable(shapes: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """A 1x1 Conv2D kernel ``(1, 1, in, out)`` compares equal to a dense ``(in, out)``."""
    return tuple(shape[2:] if len(shape) == 4 and shape[:2] == (1, 1) else shape for shape in shapes)


def _set(variable: nnx.Variable, value: np.ndarray, layer: Any) -> None:
    if tuple(variable.shape) != value.shape:
        raise ValueError(
            f"from_keras: Keras layer {layer.name!r} gives a weight of shape {value.shape}, "
            f"the jdw layer expects {tuple(variable.shape)}"
        )
    variable[...] = jnp.asarray(value, variable.dtype)


def _copy(module: nnx.Module, layer: Any) -> None:
    weights = [np.asarray(w) for w in layer.get_weights()]
    if isinstance(module, nnx.BatchNorm):
        gamma, beta, mean, var = weights
        for variable, value in zip((module.scale, module.bias, module.mean, module.var), (gamma, beta, mean, var)):
            _set(variable, value, layer)
        return
    # depthwise (kh, kw, C, M) -> (kh, kw, 1, C*M); a 1x1 Conv2D (1, 1, in, out) -> dense (in, out)
    _set(module.kernel, weights[0].reshape(module.kernel.shape), layer)
    if module.bias is not None:
        _set(module.bias, weights[1], layer)

"""Build the jdw model matching a Keras application and copy its weights (ImageNet ones included)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
from flax import nnx

from jdw.models import convnext, efficientnet
from jdw.models._base import ConvNet
from jdw.models._import import LayerScale, assign, materialize, weight_modules
from jdw.models.mobilenet_v1 import MobileNetV1
from jdw.models.mobilenet_v2 import MobileNetV2
from jdw.models.mobilenet_v3 import MobileNetV3Large, MobileNetV3Small
from jdw.models.xception import Xception
from jdw.nnx import DepthwiseConv, SeparableConv

# The MobileNet applications differ in their number of depthwise layers.
_BY_DEPTHWISE_COUNT = {13: MobileNetV1, 17: MobileNetV2, 11: MobileNetV3Small, 15: MobileNetV3Large}
# Channel count of the last block at width 1, to estimate the width of a MobileNet.
_LAST_BLOCK = {MobileNetV1: 1024, MobileNetV2: 320, MobileNetV3Small: 96, MobileNetV3Large: 160}
# The other applications by the name Keras gives the model.
_BY_NAME = {
    **{f"efficientnet{v.lower()}": getattr(efficientnet, f"EfficientNet{v}") for v in efficientnet.COEFFICIENTS},
    "efficientnetv2-s": efficientnet.EfficientNetV2S,
    **{f"convnext_{size.lower()}": getattr(convnext, f"ConvNeXt{size}") for size in convnext.SIZES},
    "xception": Xception,
}
_FAMILIES = {
    "EfficientNet": [*(getattr(efficientnet, f"EfficientNet{v}") for v in efficientnet.COEFFICIENTS)],
    "EfficientNetV2": [efficientnet.EfficientNetV2S],
    "ConvNeXt": [getattr(convnext, f"ConvNeXt{size}") for size in convnext.SIZES],
    "Xception": [Xception],
}
_WEIGHT_LAYERS = (
    "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "BatchNormalization", "LayerNormalization", "Dense", "LayerScale",
)  # fmt: skip
_SUPPORTED = (
    "MobileNet, MobileNetV2, MobileNetV3Small/Large, EfficientNetB0-B7, EfficientNetV2S, "
    "ConvNeXtTiny/Small/Base or Xception"
)


def from_keras(keras_model: Any, *, implementation: str | None = None, dtype: Any = None) -> ConvNet:
    """Builds the jdw model matching a Keras application and copies its weights.

    Works with ``keras.applications`` ``MobileNet``, ``MobileNetV2``, ``MobileNetV3Small``,
    ``MobileNetV3Large`` (any ``alpha`` and ``depth_multiplier``, V3 ``minimalistic`` or
    not), ``EfficientNetB0`` to ``B7``, ``EfficientNetV2S``, ``ConvNeXtTiny``, ``Small``
    and ``Base``, and ``Xception`` (Keras 3, any backend), with or without the top. The
    built-in preprocessing layers before the first convolution (``Rescaling``,
    ``Normalization``) become ``input_rescaling``, one scale and offset per channel where
    they differ, so the jdw model takes the same pixels the Keras model does. Batch-norm
    statistics are copied too, so the returned model, in ``eval()`` mode, computes the
    Keras model's logits (its output before ``classifier_activation``).

    Keras pads stride-2 layers as TensorFlow does ("SAME": the extra row and column at the
    bottom and right); so does the jdw model. EfficientNet's Keras model computes that
    padding from the input size it was built for (even sizes when it was built without
    one), so with odd image sizes feed it a model built for that size.

    Args:
      keras_model: a Keras application model, channels-last.
      implementation: backend of the jdw model's depthwise convolutions.
      dtype: computation dtype of the jdw model.

    Returns:
      The matching :mod:`jdw.models` model, in eval mode.

    Raises:
      ValueError: if the model is not one of those applications or its weights do not
        line up with the jdw model (the message names the layer and both shapes).

    Examples:
      >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")  # before the first keras import
      >>> import keras, jdw
      >>> model = jdw.models.from_keras(keras.applications.EfficientNetB0(weights="imagenet"))  # doctest: +SKIP
      >>> logits = model(images)  # pixels in [0, 255], as Keras's EfficientNet takes them  # doctest: +SKIP
    """
    if not hasattr(keras_model, "layers") or not hasattr(keras_model, "name"):
        raise ValueError(
            f"from_keras: expected a Keras application model (keras.applications.MobileNetV2(...) and the like), "
            f"got {type(keras_model).__name__}"
        )
    all_layers = list(_flatten(keras_model))
    layers = [layer for layer in all_layers if type(layer).__name__ in _WEIGHT_LAYERS]
    if getattr(layers[0] if layers else None, "data_format", "channels_last") != "channels_last":
        raise ValueError(f"from_keras: only channels-last Keras models are supported, got {layers[0].data_format}")
    shapes = [_comparable(tuple(tuple(w.shape) for w in layer.get_weights())) for layer in layers]
    options = _options(keras_model, all_layers, layers)
    options.update(implementation=implementation, dtype=dtype)
    for cls, extra in _candidates(keras_model, all_layers, layers):
        abstract = nnx.eval_shape(lambda: cls(**options, **extra, rngs=nnx.Rngs(0)))  # noqa: B023
        if [_keras_shapes(m) for m in weight_modules(abstract, "keras")] == shapes:
            model = materialize(abstract)
            for module, layer in zip(weight_modules(model, "keras"), layers):
                _copy(module, layer)
            model.eval()
            return model
    n_depthwise = sum(type(layer).__name__ == "DepthwiseConv2D" for layer in layers)
    raise ValueError(
        f"from_keras: no jdw model reproduces the layer shapes of {keras_model.name!r} ({len(layers)} weight layers, "
        f"{n_depthwise} depthwise); expected a Keras {_SUPPORTED} application; "
        f"first layers: {[(layer.name, s) for layer, s in zip(layers[:3], shapes[:3])]}"
    )


def _flatten(model: Any) -> Iterator[Any]:
    """The layers of a Keras model in order, those of nested models (ConvNeXt's stem) in their place."""
    for layer in model.layers:
        if hasattr(layer, "layers") and type(layer).__name__ in ("Sequential", "Functional", "Model"):
            yield from _flatten(layer)
        else:
            yield layer


def _options(keras_model: Any, all_layers: list, layers: list) -> dict:
    input_shape = keras_model.input_shape
    last = layers[-1] if layers else None
    kind = type(last).__name__
    pools = [i for i, layer in enumerate(all_layers) if type(layer).__name__ == "GlobalAveragePooling2D"]

    def after_pooling(layer: Any) -> bool:
        return bool(pools) and all_layers.index(layer) > pools[-1]

    has_top = kind == "Dense" or (kind == "Conv2D" and last.use_bias and after_pooling(last))
    options: dict[str, Any] = dict(
        num_classes=int(last.get_weights()[0].shape[-1]) if has_top else None,
        in_features=int(input_shape[-1]),
    )
    if len(layers) > 1:
        options["norm_epsilon"] = float(layers[1].epsilon)
    dropouts = [layer for layer in all_layers if type(layer).__name__ == "Dropout"]
    if has_top and dropouts and after_pooling(dropouts[-1]):
        options["dropout"] = float(dropouts[-1].rate)
    rescaling = _input_rescaling(all_layers, int(input_shape[-1]))
    if rescaling is not None:
        options["input_rescaling"] = rescaling
    return options


def _input_rescaling(all_layers: list, channels: int) -> tuple | None:
    """The preprocessing layers before the first convolution, folded into one per-channel ``x * scale + offset``."""
    scale, offset, found = np.ones(channels), np.zeros(channels), False
    for layer in all_layers:
        kind = type(layer).__name__
        if kind in _WEIGHT_LAYERS:
            break
        if kind == "Rescaling":
            s = np.broadcast_to(np.asarray(layer.scale, np.float64).reshape(-1), channels)
            o = np.broadcast_to(np.asarray(layer.offset, np.float64).reshape(-1), channels)
            scale, offset, found = scale * s, offset * s + o, True
        elif kind == "Normalization":
            mean = np.broadcast_to(np.asarray(layer.mean, np.float64).reshape(-1), channels)
            std = np.maximum(
                np.sqrt(np.broadcast_to(np.asarray(layer.variance, np.float64).reshape(-1), channels)), 1e-7
            )
            scale, offset, found = scale / std, (offset - mean) / std, True
    if not found:
        return None
    if np.all(scale == scale[0]) and np.all(offset == offset[0]):
        return float(scale[0]), float(offset[0])
    return tuple(float(s) for s in scale), tuple(float(o) for o in offset)


def _candidates(keras_model: Any, all_layers: list, layers: list) -> Iterator[tuple[type, dict]]:
    """Models (and widths or variants) to try, likeliest first; the layer shapes decide."""
    named = _BY_NAME.get(keras_model.name.lower())
    if named is not None:
        yield named, {}
    kinds = {type(layer).__name__ for layer in layers}
    if "LayerScale" in kinds or "LayerNormalization" in kinds:
        yield from ((cls, {}) for cls in _FAMILIES["ConvNeXt"])
    elif "SeparableConv2D" in kinds:
        yield Xception, {}
    n_depthwise = sum(type(layer).__name__ == "DepthwiseConv2D" for layer in layers)
    mobilenet = _BY_DEPTHWISE_COUNT.get(n_depthwise)
    if mobilenet is not None:
        yield from ((mobilenet, extra) for extra in _mobilenet_candidates(keras_model, layers, mobilenet))
    for cls in _FAMILIES["EfficientNet"] + _FAMILIES["EfficientNetV2"]:
        if efficientnet.depthwise_layers(cls) == n_depthwise:
            yield cls, {}


def _mobilenet_candidates(keras_model: Any, layers: list, cls: type) -> Iterator[dict]:
    """MobileNet widths (and variants) to try: the one in the model's name, the usual ones, estimates."""
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
        extras = [{"depth_multiplier": int(convs[1].get_weights()[0].shape[-1])}]
    elif cls in (MobileNetV3Small, MobileNetV3Large):
        extras = [{"minimalistic": False}, {"minimalistic": True}]
    seen = set()
    for width in widths:
        for extra in extras:
            key = (round(width, 9), tuple(extra.items()))
            if width > 0 and key not in seen:
                seen.add(key)
                yield {"width": width, **extra}


def _keras_shapes(module: Any) -> tuple[tuple[int, ...], ...]:
    """The shapes Keras's matching layer stores its weights in."""
    if isinstance(module, nnx.BatchNorm):
        return (module.scale.shape,) * 4
    if isinstance(module, nnx.LayerNorm):
        return (module.scale.shape, module.bias.shape)
    if isinstance(module, LayerScale):
        return (module.shape,)
    if isinstance(module, SeparableConv):
        depthwise = module.depthwise
        kernel = (*depthwise.kernel.shape[:-2], depthwise.in_features, depthwise.depth_multiplier)
        shapes = (kernel, tuple(module.pointwise.kernel.shape))
        bias = () if module.pointwise.bias is None else (tuple(module.pointwise.bias.shape),)
        return _comparable((*shapes, *bias))
    kernel = tuple(module.kernel.shape)
    if isinstance(module, DepthwiseConv) and module.depth_multiplier > 1:
        kernel = (*kernel[:-2], module.in_features, module.depth_multiplier)
    bias = () if module.bias is None else (tuple(module.bias.shape),)
    return _comparable((kernel, *bias))


def _comparable(shapes: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """Shapes as compared: a 1x1 Conv2D kernel ``(1, 1, in, out)`` equals a dense ``(in, out)``, and a
    depthwise ``(kh, kw, C, 1)`` (DepthwiseConv2D) a grouped ``(kh, kw, 1, C)`` (ConvNeXt's Conv2D)."""
    out = []
    for shape in shapes:
        if len(shape) == 4 and shape[:2] == (1, 1):
            shape = shape[2:]
        elif len(shape) == 4 and shape[3] == 1 and shape[2] > 1:
            shape = (*shape[:2], 1, shape[2])
        out.append(shape)
    return tuple(out)


def _copy(module: Any, layer: Any) -> None:
    where = f"from_keras: Keras layer {layer.name!r}"
    weights = [np.asarray(w) for w in layer.get_weights()]
    if isinstance(module, nnx.BatchNorm):
        for variable, value in zip((module.scale, module.bias, module.mean, module.var), weights):
            assign(variable, value, where)
    elif isinstance(module, nnx.LayerNorm):
        assign(module.scale, weights[0], where)
        assign(module.bias, weights[1], where)
    elif isinstance(module, LayerScale):
        assign(module.block.layer_scale, weights[0], where)
    elif isinstance(module, SeparableConv):
        assign(module.depthwise.kernel, weights[0].reshape(module.depthwise.kernel.shape), where)
        assign(module.pointwise.kernel, weights[1].reshape(module.pointwise.kernel.shape), where)
        if module.pointwise.bias is not None:
            assign(module.pointwise.bias, weights[2], where)
    else:
        # depthwise (kh, kw, C, M) -> (kh, kw, 1, C*M); a 1x1 Conv2D (1, 1, in, out) -> dense (in, out)
        assign(module.kernel, weights[0].reshape(module.kernel.shape), where)
        if module.bias is not None:
            assign(module.bias, weights[1], where)

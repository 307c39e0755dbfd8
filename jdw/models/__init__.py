"""Depthwise image models (Flax NNX): MobileNet V1-V3, EfficientNet B0-B7 and V2-S, ConvNeXt, Xception.

Weights come from Keras applications (:func:`from_keras`) or torchvision (:func:`from_torch`).
"""

from jdw.models.convnext import ConvNeXtBase, ConvNeXtSmall, ConvNeXtTiny
from jdw.models.efficientnet import (
    EfficientNetB0,
    EfficientNetB1,
    EfficientNetB2,
    EfficientNetB3,
    EfficientNetB4,
    EfficientNetB5,
    EfficientNetB6,
    EfficientNetB7,
    EfficientNetV2S,
)
from jdw.models.keras_import import from_keras
from jdw.models.mobilenet_v1 import MobileNetV1
from jdw.models.mobilenet_v2 import MobileNetV2
from jdw.models.mobilenet_v3 import MobileNetV3Large, MobileNetV3Small
from jdw.models.torch_import import from_torch
from jdw.models.xception import Xception

__all__ = [
    "ConvNeXtBase",
    "ConvNeXtSmall",
    "ConvNeXtTiny",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "EfficientNetV2S",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "Xception",
    "from_keras",
    "from_torch",
]

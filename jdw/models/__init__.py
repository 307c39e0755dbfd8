"""MobileNet V1, V2 and V3 (Flax NNX), and weight import from Keras applications."""

from jdw.models.keras_import import from_keras
from jdw.models.mobilenet_v1 import MobileNetV1
from jdw.models.mobilenet_v2 import MobileNetV2
from jdw.models.mobilenet_v3 import MobileNetV3Large, MobileNetV3Small

__all__ = ["MobileNetV1", "MobileNetV2", "MobileNetV3Large", "MobileNetV3Small", "from_keras"]

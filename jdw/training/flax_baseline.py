"""The same MobileNet with its depthwise layers built from Flax's grouped ``nnx.Conv``: the baseline.

What a Flax user writes today is ``nnx.Conv(C, C * M, k, feature_group_count=C)``; swapping
jdw's ``DepthwiseConv`` for that, parameters copied, gives the same function computed the usual
way, so the training benchmark compares like with like.
"""

from __future__ import annotations

from flax import nnx

import jdw


def grouped_conv_from(layer: jdw.nnx.DepthwiseConv) -> nnx.Conv:
    """An ``nnx.Conv(feature_group_count=C)`` computing what ``layer`` computes, with its parameters.

    Raises:
      ValueError: for a layer ``nnx.Conv`` cannot express: channels-first, a padding mode
        other than zeros, or a fused activation (which would otherwise be silently dropped).
    """
    if layer.data_format != "channels_last" or layer.padding_mode != "zeros":
        raise ValueError("only channels-last, zero-padded depthwise layers have an nnx.Conv equivalent")
    if layer.activation not in (None, "identity"):
        raise ValueError(
            f"this DepthwiseConv fuses activation={layer.activation!r}, which nnx.Conv has no place for; "
            "put the activation after the layer (as ConvNormAct does) to compare it with nnx.Conv"
        )
    conv = nnx.Conv(
        layer.in_features,
        layer.out_features,
        layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        kernel_dilation=layer.dilation,
        feature_group_count=layer.in_features,
        use_bias=layer.use_bias,
        dtype=layer.dtype,
        param_dtype=layer.param_dtype,
        precision=layer.precision,
        rngs=nnx.Rngs(0),
    )
    conv.kernel = nnx.Param(layer.kernel[...])
    if layer.use_bias:
        conv.bias = nnx.Param(layer.bias[...])
    return conv


def with_flax_grouped_conv(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with every ``jdw.nnx.DepthwiseConv`` replaced by the equivalent ``nnx.Conv``."""
    model = nnx.clone(model)

    def swap(node):
        children = list(enumerate(node)) if isinstance(node, nnx.List) else list(vars(node).items())
        for name, child in children:
            if isinstance(child, jdw.nnx.DepthwiseConv):
                replacement = grouped_conv_from(child)
                if isinstance(node, nnx.List):
                    node[name] = replacement
                else:
                    setattr(node, name, replacement)
            elif isinstance(child, (nnx.Module, nnx.List)):
                swap(child)

    swap(model)
    return model

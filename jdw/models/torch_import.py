"""Build the jdw model matching a torchvision model (or its state dict) and copy its weights."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from flax import nnx

from jdw.models import convnext, efficientnet
from jdw.models._base import ConvNet
from jdw.models._import import LayerScale, assign, materialize, weight_modules
from jdw.models.mobilenet_v2 import MobileNetV2
from jdw.models.mobilenet_v3 import MobileNetV3Large, MobileNetV3Small

# torchvision's name of each model, the jdw class, and the batch norm torchvision builds it with
# (epsilon, PyTorch momentum); ConvNeXt has layer norms (epsilon 1e-6) only.
ARCHITECTURES: dict[str, tuple[type, tuple[float, float] | None]] = {
    "mobilenet_v2": (MobileNetV2, (1e-5, 0.1)),
    "mobilenet_v3_small": (MobileNetV3Small, (1e-3, 0.01)),
    "mobilenet_v3_large": (MobileNetV3Large, (1e-3, 0.01)),
    **{
        f"efficientnet_{v.lower()}": (
            getattr(efficientnet, f"EfficientNet{v}"),
            (1e-3, 0.01) if v in ("B5", "B6", "B7") else (1e-5, 0.1),
        )
        for v in efficientnet.COEFFICIENTS
    },
    **{f"convnext_{size.lower()}": (getattr(convnext, f"ConvNeXt{size}"), None) for size in convnext.SIZES},
}
# timm's names for the same architectures, where its keys are torchvision's.
ALIASES = {"mobilenetv2_100": "mobilenet_v2", "mobilenetv3_large_100": "mobilenet_v3_large"}


def from_torch(
    module_or_state_dict: Any,
    architecture: str | None = None,
    *,
    implementation: str | None = None,
    dtype: Any = None,
) -> ConvNet:
    """Builds the jdw model matching a torchvision model and copies its weights.

    Works with torchvision's ``mobilenet_v2``, ``mobilenet_v3_small``,
    ``mobilenet_v3_large``, ``efficientnet_b0`` to ``efficientnet_b7``, ``convnext_tiny``,
    ``convnext_small`` and ``convnext_base``, given as the ``torch.nn.Module`` or as its
    ``state_dict()`` (a mapping of names to tensors or arrays). The architecture is found
    from the weights' shapes; name it to skip the search. The jdw model is built the way
    torchvision builds it:

    - ``padding="SYMMETRIC"``: PyTorch pads ``(k - 1) // 2`` on both sides, where Keras
      and the jdw default put the extra row and column of a stride-2 layer at the end.
    - Batch norms with torchvision's epsilon (1e-5, or 1e-3 for MobileNetV3 and
      EfficientNet-B5 to B7; read from the module when one is given) and momentum
      ``1 - torch_momentum`` (PyTorch weighs the new batch by ``momentum``, Flax the old
      average).
    - Layouts converted: convolution kernels ``(O, I/groups, kh, kw)`` to ``(kh, kw, I/groups, O)``
      (a depthwise ``(C, 1, kh, kw)`` to jdw's ``(kh, kw, 1, C)``), linear ``(out, in)`` to
      ``(in, out)``, ConvNeXt's layer scale ``(C, 1, 1)`` to ``(C,)``;
      ``num_batches_tracked`` is dropped.

    The returned model, in ``eval()`` mode, computes torchvision's logits for the same
    images in channels-last layout (``x.permute(0, 2, 3, 1)``), normalised as torchvision's
    transforms do (ImageNet mean and standard deviation; not part of either model).

    Args:
      module_or_state_dict: a torchvision model or its ``state_dict()``.
      architecture: torchvision's name of the model (``"efficientnet_b0"``; also timm's
        ``"mobilenetv2_100"`` and ``"mobilenetv3_large_100"``), or ``None`` to find it.
      implementation: backend of the jdw model's depthwise convolutions.
      dtype: computation dtype of the jdw model.

    Returns:
      The matching :mod:`jdw.models` model, in eval mode.

    Raises:
      ValueError: for an unknown architecture, or weights that match none of them (the
        message names the first weights and their shapes).

    Examples:
      >>> import torchvision, jdw  # doctest: +SKIP
      >>> torch_model = torchvision.models.efficientnet_b0(weights="IMAGENET1K_V1")  # doctest: +SKIP
      >>> model = jdw.models.from_torch(torch_model)  # doctest: +SKIP
      >>> logits = model(images_nhwc)  # doctest: +SKIP
    """
    module = module_or_state_dict if hasattr(module_or_state_dict, "state_dict") else None
    state = module.state_dict() if module is not None else module_or_state_dict
    if not isinstance(state, Mapping) or not state:
        raise ValueError(
            f"from_torch: expected a torchvision model or its state_dict(), got {type(module_or_state_dict).__name__}"
        )
    groups = _groups(state)
    shapes = [tuple(tuple(v.shape) for v in group.values()) for _, group in groups]
    if architecture is not None:
        name = ALIASES.get(architecture, architecture)
        if name not in ARCHITECTURES:
            raise ValueError(
                f"from_torch: unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}"
            )
        names = [name]
    else:
        names = list(_likely(module)) + [n for n in ARCHITECTURES if n not in set(_likely(module))]
    # Depthwise kernels (C, 1, kh, kw) after the stem: an EfficientNet of another depth cannot match.
    n_depthwise = sum(
        1 for _, group in groups[1:] if group.get("weight", np.zeros(())).ndim == 4 and group["weight"].shape[1] == 1
    )
    for name in names:
        cls, norm = ARCHITECTURES[name]
        if issubclass(cls, efficientnet._EfficientNet) and efficientnet.depthwise_layers(cls) != n_depthwise:
            continue
        options = _options(cls, norm, module, groups)
        options.update(implementation=implementation, dtype=dtype)
        abstract = nnx.eval_shape(lambda: cls(**options, rngs=nnx.Rngs(0)))  # noqa: B023
        if [_torch_shapes(m) for m in weight_modules(abstract, "torch")] == shapes:
            model = materialize(abstract)
            for target, (prefix, group) in zip(weight_modules(model, "torch"), groups):
                _copy(target, prefix, group)
            model.eval()
            return model
    tried = names[0] if len(names) == 1 else f"any of {sorted(names)}"
    raise ValueError(
        f"from_torch: the {len(groups)} weight groups do not match {tried}; "
        f"first ones: {[(prefix, s) for (prefix, _), s in zip(groups[:3], shapes[:3])]}"
    )


def _groups(state: Mapping[str, Any]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The state dict's arrays grouped by module (the key without its last part), in order."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
        groups.setdefault(prefix, {})[leaf] = np.asarray(value)
    return list(groups.items())


def _likely(module: Any) -> Iterator[str]:
    """Architectures a module's class suggests, so the shape search starts there."""
    kind = type(module).__name__ if module is not None else ""
    prefixes = {"MobileNetV2": "mobilenet_v2", "MobileNetV3": "mobilenet_v3", "EfficientNet": "efficientnet_b",
                "ConvNeXt": "convnext"}  # fmt: skip
    prefix = prefixes.get(kind)
    if prefix:
        yield from (name for name in ARCHITECTURES if name.startswith(prefix))


def _options(cls: type, norm: tuple[float, float] | None, module: Any, groups: list) -> dict:
    classifier = [group for _, group in groups if "weight" in group and group["weight"].ndim == 2][-1:]
    options: dict[str, Any] = dict(num_classes=int(classifier[0]["weight"].shape[0]) if classifier else None)
    if norm is None:  # ConvNeXt
        return options
    epsilon, momentum = norm
    if module is not None:
        for child in module.modules():
            if type(child).__name__ == "BatchNorm2d":
                epsilon, momentum = float(child.eps), float(child.momentum if child.momentum is not None else 0.1)
                break
        dropouts = [child for child in module.modules() if type(child).__name__ == "Dropout"]
        if dropouts:
            options["dropout"] = float(dropouts[-1].p)
    options.update(padding="SYMMETRIC", norm_epsilon=epsilon, norm_momentum=1.0 - momentum)
    return options


def _torch_shapes(module: Any) -> tuple[tuple[int, ...], ...]:
    """The shapes PyTorch's matching module stores its weights in, in state-dict order."""
    if isinstance(module, nnx.BatchNorm):
        return (module.scale.shape,) * 4
    if isinstance(module, nnx.LayerNorm):
        return (module.scale.shape, module.bias.shape)
    if isinstance(module, LayerScale):
        return ((*module.shape, 1, 1),)
    kernel = tuple(module.kernel.shape)
    if isinstance(module, nnx.Linear):
        kernel = kernel[::-1]
    else:  # (kh, kw, I/groups, O) -> (O, I/groups, kh, kw)
        kernel = (kernel[-1], kernel[-2], *kernel[:-2])
    bias = () if module.bias is None else (tuple(module.bias.shape),)
    return (kernel, *bias)


def _copy(module: Any, prefix: str, group: dict[str, np.ndarray]) -> None:
    where = f"from_torch: {prefix!r}"
    if isinstance(module, nnx.BatchNorm):
        variables = (module.scale, module.bias, module.mean, module.var)
        for variable, key in zip(variables, ("weight", "bias", "running_mean", "running_var")):
            assign(variable, group[key], where)
    elif isinstance(module, nnx.LayerNorm):
        assign(module.scale, group["weight"], where)
        assign(module.bias, group["bias"], where)
    elif isinstance(module, LayerScale):
        assign(module.block.layer_scale, group["layer_scale"].reshape(module.shape), where)
    else:
        weight = group["weight"]
        # linear (out, in) -> (in, out); convolution (O, I/groups, kh, kw) -> (kh, kw, I/groups, O)
        assign(module.kernel, weight.T if isinstance(module, nnx.Linear) else weight.transpose(2, 3, 1, 0), where)
        if module.bias is not None:
            assign(module.bias, group["bias"], where)

"""The training configuration, its per-dataset defaults and the command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from collections.abc import Sequence

import jdw

MODELS = {
    "mobilenet_v1": jdw.models.MobileNetV1,
    "mobilenet_v2": jdw.models.MobileNetV2,
    "mobilenet_v3_small": jdw.models.MobileNetV3Small,
    "mobilenet_v3_large": jdw.models.MobileNetV3Large,
    **{f"efficientnet_b{i}": getattr(jdw.models, f"EfficientNetB{i}") for i in range(8)},
    "efficientnet_v2_s": jdw.models.EfficientNetV2S,
    "convnext_tiny": jdw.models.ConvNeXtTiny,
    "convnext_small": jdw.models.ConvNeXtSmall,
    "convnext_base": jdw.models.ConvNeXtBase,
    "xception": jdw.models.Xception,
}


def model_options(model: str) -> frozenset[str]:
    """The keyword arguments the model called ``model`` takes (ConvNeXt has no batch norms, Xception
    no stochastic depth)."""
    return frozenset(inspect.signature(MODELS[model].__init__).parameters)


DATASETS = ("digits", "cifar10", "folder")
OPTIMIZERS = ("sgd", "rmsprop", "adamw")
PROG = "train_mobilenet.py"  # the name --help and errors show (also what python -m jdw.training runs)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that determines a training run (the workdir's ``config.json``).

    Two runs with equal configs on the same devices give the same numbers; a rerun in the
    same workdir resumes only with an equal config.
    """

    model: str = "mobilenet_v2"
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int = 32
    width: float = 0.5
    small_inputs: bool = True
    dropout: float = 0.2
    stochastic_depth_rate: float = 0.0
    norm_momentum: float = 0.9
    implementation: str | None = None
    dtype: str = "float32"
    epochs: int = 12
    batch_size: int = 64
    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    ema_decay: float = 0.0
    augment: bool = False
    flip: bool = False
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0: at the end of every epoch only

    def __post_init__(self):
        problems = [
            f"{field.name}={getattr(self, field.name)} must be a finite number"
            for field in dataclasses.fields(self)
            if isinstance(getattr(self, field.name), float) and not math.isfinite(getattr(self, field.name))
        ]
        if self.model not in MODELS:
            problems.append(f"model={self.model!r} is not one of {sorted(MODELS)}")
        elif self.stochastic_depth_rate and "stochastic_depth_rate" not in model_options(self.model):
            problems.append(f"model={self.model!r} has no stochastic depth, so stochastic_depth_rate must be 0")
        if self.dataset not in DATASETS:
            problems.append(f"dataset={self.dataset!r} is not one of {list(DATASETS)}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer={self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.implementation is not None and self.implementation not in jdw.backends.available():
            problems.append(f"implementation={self.implementation!r} is not one of {list(jdw.backends.available())}")
        if self.dtype not in ("float32", "bfloat16"):
            problems.append(f"dtype={self.dtype!r} is not 'float32' or 'bfloat16'")
        for name in ("image_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("width", "learning_rate"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        for name in ("dropout", "stochastic_depth_rate", "label_smoothing", "ema_decay", "norm_momentum"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.checkpoint_every < 0:
            problems.append("weight_decay, warmup_epochs and checkpoint_every must not be negative")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))


# What each dataset trains with unless a flag says otherwise.
DATASET_DEFAULTS = {
    # Scanned 8x8 digits upsampled to 32x32: MobileNetV2 at width 0.5 reaches 94-97% test accuracy (the
    # backend's summation order decides which) in 1.5 to 3 minutes on 2 CPU cores (under tcmalloc; see
    # jdw.training.allocator). (Random shifts learn slower: 94.7%
    # after the same 12 epochs. Never flip digits.)
    "digits": dict(),
    # The known from-scratch recipe for MobileNetV2 on CIFAR-10 (about 94% test accuracy): stem and first
    # stride-2 block at stride 1 for 32x32 inputs, SGD with momentum at 0.1, cosine decay over 200 epochs,
    # batch 128, weight decay 5e-4, random crops and flips.
    "cifar10": dict(
        width=1.0,
        dropout=0.0,
        norm_momentum=0.9,
        epochs=200,
        batch_size=128,
        optimizer="sgd",
        learning_rate=0.1,
        weight_decay=5e-4,
        warmup_epochs=0.0,
        label_smoothing=0.0,
        augment=True,
        flip=True,
    ),
    # A user's own images, resized to 96x96, with the usual ImageNet-style stride.
    "folder": dict(
        image_size=96, small_inputs=False, width=1.0, epochs=30, learning_rate=1e-3, augment=True, flip=True
    ),
}


def config_for(dataset: str, **overrides) -> Config:
    """The dataset's defaults with ``overrides`` applied."""
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"dataset={dataset!r} is not one of {list(DATASETS)}")
    return Config(dataset=dataset, **{**DATASET_DEFAULTS[dataset], **overrides})


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _default_text(name: str) -> str:
    """The default of config field ``name`` for the default dataset, and where another dataset's preset differs."""
    default = getattr(config_for("digits"), name)
    others = [
        f"{dataset}: {getattr(config_for(dataset), name)}"
        for dataset in DATASETS[1:]
        if getattr(config_for(dataset), name) != default
    ]
    if default is None and name != "implementation":  # --data-dir: nothing to show
        return "; ".join(others)
    shown = "auto" if default is None else default
    return f"default: {shown}" + (f"; {', '.join(others)}" if others else "")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default (the config's, for the default dataset) after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        field = action.dest
        if field in _CONFIG_FIELDS:
            default = _default_text(field)
            return f"{text} ({default})" if default else text
        if action.default not in (None, argparse.SUPPRESS, False):
            return f"{text} (default: {action.default})"
        return text


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(Config)} - {"dataset"}


def parser() -> argparse.ArgumentParser:
    """The command line of ``examples/train_mobilenet.py``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Train a jdw model (MobileNet, EfficientNet, ConvNeXt, Xception) with optax on CPU, GPU or TPU.\n\n"
            "With no flags: MobileNetV2 (width 0.5) on scikit-learn's bundled handwritten\n"
            "digits, offline, a few minutes on a 2-core CPU. Unset flags take the\n"
            "dataset's defaults: each flag shows its default for --dataset digits, then\n"
            "the presets that differ (--dataset cifar10 is the published MobileNetV2\n"
            "recipe, about 94% test accuracy after 200 epochs)."
        ),
        formatter_class=_HelpFormatter,
    )
    a = p.add_argument
    a("--model", choices=sorted(MODELS), help="architecture")
    a(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="digits: offline, bundled with scikit-learn; "
        "cifar10: the Python tarball, read from --data-dir or downloaded; folder: --data-dir/{train,test}/CLASS/*.png",
    )
    a("--data-dir", help="where the dataset lies (cifar10: the tarball or its extracted folder; folder: the root)")
    a("--image-size", type=int, help="images are resized to this square size")
    a("--width", type=float, help="width multiplier (alpha) of the network")
    a(
        "--small-inputs",
        type=_bool,
        help="smaller strides for images of about 32x32: total stride 8 instead of 32 (16 for ConvNeXt and Xception)",
    )
    a("--dropout", type=float, help="dropout before the classifier")
    a("--stochastic-depth-rate", type=float, help="drop-path rate of the last residual block (scaled linearly)")
    a(
        "--implementation",
        choices=["auto", *jdw.backends.available()],
        help="jdw depthwise backend (auto: the fastest for the device)",
    )
    a("--dtype", choices=["float32", "bfloat16"], help="compute dtype (parameters stay float32)")
    a("--epochs", type=int, help="passes over the training set")
    a("--batch-size", type=int, help="global batch, split over all devices")
    a("--optimizer", choices=OPTIMIZERS, help="sgd (Nesterov momentum), rmsprop (MobileNet paper) or adamw")
    a("--learning-rate", type=float, help="peak learning rate, after warmup, before cosine decay")
    a("--weight-decay", type=float, help="decoupled weight decay on kernels (not on batch-norm or biases)")
    a("--warmup-epochs", type=float, help="linear warmup length")
    a("--label-smoothing", type=float, help="label smoothing of the cross-entropy")
    a("--ema-decay", type=float, help="evaluate a moving average of the weights and batch-norm statistics (0: off)")
    a("--augment", type=_bool, help="random shifts of up to 4 pixels (zero-padded crops)")
    a("--flip", type=_bool, help="with --augment, also random horizontal flips (not for digits)")
    a("--seed", type=int, help="seed of initialization, data order, augmentation and dropout")
    a("--checkpoint-every", type=int, help="also save every this many steps (0: at epoch ends only)")
    a(
        "--workdir",
        default="runs/mobilenet",
        help="checkpoints, metrics.jsonl, metrics.png and summary.json; "
        "rerunning the same command resumes from the last checkpoint here",
    )
    a(
        "--multihost",
        action="store_true",
        help="call jax.distributed.initialize() first (TPU pod slices, multi-node GPU)",
    )
    a("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return p


def parse_flags(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """The config the flags ask for, and the flags themselves (for ``--workdir`` and the like)."""
    args = parser().parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if name in _CONFIG_FIELDS and value is not None}
    if overrides.get("implementation") == "auto":
        overrides["implementation"] = None
    try:
        return config_for(args.dataset, **overrides), args
    except ValueError as error:
        parser().error(str(error))

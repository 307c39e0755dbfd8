"""The training logic as pure functions: model, optimizer, state, train step, eval step, the loop.

The train state is a pytree of arrays (parameters, batch statistics and dropout RNG state,
optimizer state, optional EMA weights); the steps are jitted pure functions of it, with the batch
sharded over a ``("data",)`` mesh of every device and the state replicated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jdw import _compat

from . import checkpoints, data, reporting
from .config import MODELS, Config, model_options


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a training step reads and writes; what checkpoints hold.

    Attributes:
      step: steps taken so far (int32 scalar).
      params: the model's ``nnx.Param`` values (a pure ``nnx.State``).
      model_state: everything else of the model: batch-norm statistics, dropout RNG state.
      opt_state: the optax state.
      ema_params: exponential moving average of ``params``, or ``None`` when off.
      ema_model_state: the same average of ``model_state``'s floating-point entries (batch-norm
        statistics; others are the latest values), evaluated with ``ema_params``; ``None`` when off.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    ema_params: Any
    ema_model_state: Any


def create_model(config: Config, num_classes: int, in_features: int) -> nnx.Module:
    """The model ``config`` describes, initialised under ``jit`` (one compilation, not one per shape)."""
    cls = MODELS[config.model]
    options = dict(
        num_classes=num_classes,
        width=config.width,
        in_features=in_features,
        dropout=config.dropout,
        small_inputs=config.small_inputs,
        stochastic_depth_rate=config.stochastic_depth_rate,
        norm_momentum=config.norm_momentum,
        implementation=config.implementation,
        dtype=jnp.dtype(config.dtype),
    )
    # Every model takes these but for norm_momentum (ConvNeXt has layer norms only) and
    # stochastic_depth_rate (Xception; the config refuses a non-zero one there).
    accepted = model_options(config.model)
    options = {name: value for name, value in options.items() if name in accepted}
    return nnx.jit(lambda: cls(**options, rngs=nnx.Rngs(config.seed)))()


def decay_mask(params: Any) -> Any:
    """Weight decay on kernels only: not on batch-norm scales and offsets or biases (all 1-D)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: Config, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its learning-rate schedule: linear warmup, then cosine decay to zero."""
    total = max(config.epochs * steps_per_epoch, 1)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else config.learning_rate,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=0.0,
    )
    if config.optimizer == "adamw":
        tx = optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    else:
        if config.optimizer == "sgd":
            base = optax.sgd(schedule, momentum=config.momentum, nesterov=True)
        else:  # the MobileNet papers' RMSProp
            base = optax.rmsprop(schedule, decay=0.9, eps=1e-3, momentum=config.momentum)
        # L2-style decay, added to the gradient before the update as SGD papers define it.
        tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask), base)
    return tx, schedule


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, *, ema: bool
) -> tuple[nnx.GraphDef, TrainState]:
    """Splits ``model`` into its static graph and a :class:`TrainState` at step 0."""
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    params, model_state = _compat.as_pure(params), _compat.as_pure(model_state)
    ema_params = jax.tree.map(jnp.copy, params) if ema else None
    ema_model_state = jax.tree.map(jnp.copy, model_state) if ema else None
    return graphdef, TrainState(
        jnp.zeros((), jnp.int32), params, model_state, tx.init(params), ema_params, ema_model_state
    )


def count_parameters(params: Any) -> int:
    """How many numbers ``params`` (a pytree of arrays) holds.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jdw.training.train import count_parameters
      >>> count_parameters({"kernel": jnp.ones((3, 3, 1, 8)), "bias": jnp.ones(8)})
      80
    """
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def ema_decay_at(step: jax.Array, ema_decay: float) -> jax.Array:
    """The decay of the weights' moving average after ``step`` steps: ``min(ema_decay, (1 + step) / (10 + step))``.

    TensorFlow's ``ExponentialMovingAverage(num_updates=step)``, as the MobileNet and EfficientNet
    recipes use it: the average follows the weights closely at first, so it does not hold on to
    the initial weights for ``1 / (1 - ema_decay)`` steps.

    Examples:
      >>> from jdw.training.train import ema_decay_at
      >>> [round(float(ema_decay_at(step, 0.999)), 4) for step in (0, 10, 1000, 100_000)]
      [0.1, 0.55, 0.9911, 0.999]
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(ema_decay), (1.0 + step) / (10.0 + step))


def _moving_average(average: Any, latest: Any, decay: jax.Array) -> Any:
    """``average + (1 - decay) * (latest - average)`` on floating-point leaves; others take the latest value."""

    def update(a, v):
        if not jnp.issubdtype(v.dtype, jnp.floating):
            return v
        return (a + (1.0 - decay).astype(v.dtype) * (v - a)).astype(v.dtype)

    return jax.tree.map(update, average, latest)


def _at_least_float32(logits: jax.Array) -> jax.Array:
    """Logits computed in bfloat16 are upcast for the loss; float64 runs stay in float64."""
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Mean softmax cross-entropy against one-hot labels smoothed by ``label_smoothing``."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    label_smoothing: float,
    ema_decay: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a batch (batch-norm statistics and dropout in training mode)."""

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.model_state)
        model.train()
        logits = _at_least_float32(model(images))
        _, _, model_state = nnx.split(model, nnx.Param, ...)
        return cross_entropy(logits, labels, label_smoothing), (logits, _compat.as_pure(model_state))

    (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params, ema_model_state = state.ema_params, state.ema_model_state
    if ema_params is not None:
        decay = ema_decay_at(state.step, ema_decay)
        ema_params = _moving_average(ema_params, params, decay)
        ema_model_state = _moving_average(ema_model_state, model_state, decay)
    metrics = {
        "train_loss": loss,
        "train_accuracy": jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32)),
        "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
    }
    return TrainState(state.step + 1, params, model_state, opt_state, ema_params, ema_model_state), metrics


def eval_step(
    state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array, *, graphdef: nnx.GraphDef
) -> dict[str, jax.Array]:
    """Sums of loss and correct predictions over the real (``mask``) examples, in inference mode.

    Evaluates the moving averages of the weights and batch statistics when the state has them.
    """
    if state.ema_params is None:
        params, model_state = state.params, state.model_state
    else:
        params, model_state = state.ema_params, state.ema_model_state
    model = nnx.merge(graphdef, params, model_state)
    model.eval()
    logits = _at_least_float32(model(images))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weights = mask.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(losses * weights), "correct": jnp.sum(correct * weights), "count": jnp.sum(weights)}


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where arrays live: a 1-D ``("data",)`` mesh over all devices; batches split, state replicated."""

    mesh: jax.sharding.Mesh

    @classmethod
    def over(cls, devices: list | None = None) -> Placement:
        devices = jax.devices() if devices is None else devices
        return cls(jax.make_mesh((len(devices),), ("data",), (AxisType.Auto,), devices=devices))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    def global_batch(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        """Arrays holding the global batch; each process supplies its own contiguous share."""
        count, index = jax.process_count(), jax.process_index()
        out = []
        for array in arrays:
            share = len(array) // count
            out.append(jax.make_array_from_process_local_data(self.batch, array[index * share : (index + 1) * share]))
        return tuple(out)


def jit_steps(
    config: Config,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    placement: Placement,
) -> tuple[Callable, Callable]:
    """``train_step`` and ``eval_step`` compiled for ``placement`` (the state buffer is donated)."""
    train = jax.jit(
        functools.partial(
            train_step,
            graphdef=graphdef,
            tx=tx,
            schedule=schedule,
            label_smoothing=config.label_smoothing,
            ema_decay=config.ema_decay,
        ),
        in_shardings=(placement.replicated, placement.batch, placement.batch),
        out_shardings=(placement.replicated, placement.replicated),
        donate_argnums=0,
    )
    evaluate = jax.jit(
        functools.partial(eval_step, graphdef=graphdef),
        in_shardings=(placement.replicated, placement.batch, placement.batch, placement.batch),
        out_shardings=placement.replicated,
    )
    return train, evaluate


def evaluate(
    eval_fn: Callable, state: TrainState, dataset: data.Dataset, batch_size: int, placement: Placement
) -> dict[str, float]:
    """Test loss and accuracy over the whole test split."""
    totals = None
    for images, labels, mask in data.eval_batches(dataset.test_images, dataset.test_labels, batch_size):
        sums = eval_fn(state, *placement.global_batch(images, labels, mask))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    count = float(totals["count"])
    return {"eval_loss": float(totals["loss_sum"]) / count, "eval_accuracy": float(totals["correct"]) / count}


class TrainingError(RuntimeError):
    """The run cannot go on (its loss became NaN or infinite)."""


@dataclasses.dataclass(frozen=True)
class _EpochSums:
    """Sums over the steps of one epoch so far: train loss and accuracy, steps, seconds."""

    loss: float = 0.0
    accuracy: float = 0.0
    steps: int = 0
    seconds: float = 0.0

    @classmethod
    def resumed(cls, records: list[dict[str, Any]], step: int) -> _EpochSums:
        """The sums the run that saved the checkpoint of ``step`` had reached (zero if it wrote none)."""
        saved = [r["epoch_so_far"] for r in records if r.get("step") == step and "epoch_so_far" in r]
        return cls(**saved[-1]) if saved else cls()

    def plus(self, metrics: list[dict[str, jax.Array]], seconds: float) -> _EpochSums:
        return _EpochSums(
            self.loss + sum(float(m["train_loss"]) for m in metrics),
            self.accuracy + sum(float(m["train_accuracy"]) for m in metrics),
            self.steps + len(metrics),
            self.seconds + seconds,
        )

    def record(self, batch_size: int) -> dict[str, float]:
        return {
            "train_loss": self.loss / self.steps,
            "train_accuracy": self.accuracy / self.steps,
            "train_seconds": round(self.seconds, 3),
            "images": self.steps * batch_size,
            "images_per_second": self.steps * batch_size / self.seconds,
        }


def _check_finite(epoch: _EpochSums, step: int, config: Config, store: checkpoints.Checkpoints) -> None:
    if math.isfinite(epoch.loss):
        return
    store.close()
    latest = store.latest_step()
    kept = f"the last checkpoint (step {latest}) is kept" if latest is not None else "no checkpoint was written"
    raise TrainingError(
        f"the training loss became {epoch.loss} by step {step}: the run diverged, so it stops here and {kept}. "
        f"Try a lower --learning-rate (now {config.learning_rate}) or a longer --warmup-epochs "
        f"(now {config.warmup_epochs}), in a new --workdir."
    )


def train_and_evaluate(
    config: Config,
    workdir: str | pathlib.Path,
    *,
    progress: bool = True,
    stop_after_step: int | None = None,
    dataset: data.Dataset | None = None,
    devices: list | None = None,
) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says, resuming from ``workdir``'s last checkpoint.

    Args:
      config: the run.
      workdir: checkpoints, ``metrics.jsonl``, ``metrics.png``, ``summary.json``, ``config.json``.
      progress: show a progress bar.
      stop_after_step: stop (as a preempted job would) once this many steps are done in total.
      dataset: use this instead of loading ``config.dataset``.
      devices: the devices to train on (default: all).

    Returns:
      The final summary: test accuracy and loss, steps, time, images per second, device count.
    """
    workdir = pathlib.Path(workdir)
    placement = Placement.over(devices)
    devices_used = placement.mesh.devices.size
    if config.batch_size % devices_used:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of devices, {devices_used}")
    if dataset is None:
        dataset = data.load(config.dataset, data_dir=config.data_dir, image_size=config.image_size, seed=config.seed)
    per_epoch = data.steps_per_epoch(len(dataset.train_labels), config.batch_size)
    if per_epoch == 0:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training set ({len(dataset.train_labels)} images)"
        )
    total_steps = per_epoch * config.epochs

    model = create_model(config, dataset.num_classes, dataset.image_shape[-1])
    tx, schedule = create_optimizer(config, per_epoch)
    graphdef, state = create_train_state(model, tx, ema=config.ema_decay > 0)
    del model
    state = jax.device_put(state, placement.replicated)
    train_fn, eval_fn = jit_steps(config, graphdef, tx, schedule, placement)

    store = checkpoints.Checkpoints(workdir, config)
    state = store.restore_latest(state)
    start = int(state.step)
    if start >= total_steps and (workdir / "summary.json").exists():  # this run is done: report it, change nothing
        store.close()
        return json.loads((workdir / "summary.json").read_text())
    writer = reporting.MetricsWriter(workdir / "metrics.jsonl", keep_up_to_step=start)
    bar = reporting.Progress(total_steps, start, enabled=progress)
    if start:
        bar.write(f"resumed from the checkpoint at step {start} in {store.directory}")

    n_params = count_parameters(state.params)
    bar.write(
        f"{config.model} width {config.width} ({n_params:,} parameters) on {config.dataset} "
        f"({len(dataset.train_labels)} train / {len(dataset.test_labels)} test images, {dataset.image_shape}), "
        f"{devices_used} {jax.devices()[0].platform} device(s), {total_steps} steps"
    )
    end = total_steps if stop_after_step is None else min(stop_after_step, total_steps)
    # The epoch in progress: its sums so far, carried over from the run that saved the checkpoint resumed from.
    epoch = _EpochSums.resumed(writer.records(), start) if start % per_epoch else _EpochSums()
    epoch_metrics, epoch_start = [], time.perf_counter()
    for step in range(start, end):
        images, labels = data.train_batch(
            dataset, step, batch_size=config.batch_size, seed=config.seed, augment=config.augment, flip=config.flip
        )
        batch = placement.global_batch(images, labels)
        if step == start:  # compile before the clock starts, so images/s measures training alone
            bar.write(f"compiling the train step for {jax.devices()[0].platform} (once per run)...")
            began = time.perf_counter()
            train_fn = train_fn.lower(state, *batch).compile()
            bar.write(f"compiled in {time.perf_counter() - began:.1f} s; training")
            epoch_start = time.perf_counter()
            bar.restart_clock()
        state, metrics = train_fn(state, *batch)
        epoch_metrics.append(metrics)
        bar.update(config.batch_size, metrics["train_loss"])
        done = step + 1
        if done % per_epoch and not (config.checkpoint_every and done % config.checkpoint_every == 0):
            continue
        jax.block_until_ready(state)
        bar.flush()
        epoch = epoch.plus(epoch_metrics, time.perf_counter() - epoch_start)
        epoch_metrics, epoch_start = [], time.perf_counter()
        _check_finite(epoch, done, config, store)
        if done % per_epoch:  # a checkpoint within the epoch: its sums so far go with it
            writer.write({"step": done, "epoch_so_far": dataclasses.asdict(epoch)})
            store.save(done, state)
            epoch_start = time.perf_counter()
            bar.restart_clock()
            continue
        record = {"step": done, "epoch": done // per_epoch, **epoch.record(config.batch_size)}
        record["learning_rate"] = float(metrics["learning_rate"])
        writer.write(record)
        result = evaluate(eval_fn, state, dataset, config.batch_size, placement)
        writer.write({"step": done, "epoch": done // per_epoch, **result})
        bar.write(
            f"epoch {done // per_epoch:3d}/{config.epochs}  train loss {record['train_loss']:.4f}  "
            f"train acc {record['train_accuracy']:.2%}  test loss {result['eval_loss']:.4f}  "
            f"test acc {result['eval_accuracy']:.2%}  {record['images_per_second']:.0f} img/s"
        )
        reporting.plot(writer.records(), workdir / "metrics.png")
        store.save(done, state)
        epoch = _EpochSums()
        epoch_start = time.perf_counter()  # the evaluation, plot and checkpoint are not training time
        bar.restart_clock()
    bar.close()
    store.close()
    final = evaluate(eval_fn, state, dataset, config.batch_size, placement)
    # Whole-run figures: every finished epoch of this run and of the runs it resumed.
    epochs = [r for r in writer.records() if "train_seconds" in r]
    train_time = sum(r["train_seconds"] for r in epochs)
    trained_images = sum(r["images"] for r in epochs)
    summary = {
        "step": int(state.step),
        "finished": int(state.step) == total_steps,
        "test_accuracy": final["eval_accuracy"],
        "test_loss": final["eval_loss"],
        "train_seconds": round(train_time, 2),
        "images_per_second": trained_images / train_time if train_time else None,
        "devices": devices_used,
        "platform": jax.devices()[0].platform,
        "parameters": n_params,
    }
    reporting.write_summary(summary, workdir / "summary.json")
    return summary

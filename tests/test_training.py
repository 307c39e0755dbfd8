"""The training example end to end: a tiny run, exact resumption, a kill mid-save, 8 devices = 1 device."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from training_helpers import EXAMPLES, tiny_config, tiny_digits

import jdw
from jdw.training import checkpoints, config, data, train


@pytest.fixture(autouse=True)
def standard_promotion():
    # The example is user code: it runs under JAX's default promotion rules, not the suite's strict ones.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_reports(tmp_path):
    cfg = tiny_config(epochs=3, learning_rate=1e-2)
    summary = train.train_and_evaluate(cfg, tmp_path, progress=False, dataset=tiny_digits(train=512, test=128))
    assert summary["finished"] and summary["step"] == 3 * (512 // 32) and summary["devices"] == 1
    assert summary["images_per_second"] > 0
    records = _records(tmp_path)
    evals = [r for r in records if "eval_accuracy" in r]
    assert [r["epoch"] for r in evals] == [1, 2, 3] and all("eval_loss" in r for r in evals)
    trains = [r for r in records if "train_loss" in r]
    assert trains[-1]["train_loss"] < trains[0]["train_loss"]
    assert evals[-1]["eval_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert summary["test_accuracy"] == evals[-1]["eval_accuracy"]
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == summary["step"]


def test_optimizer_decays_kernels_only_and_warms_up():
    cfg = tiny_config(warmup_epochs=1.0, epochs=4, learning_rate=0.5)
    _, schedule = train.create_optimizer(cfg, steps_per_epoch=10)
    assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(0.5)
    assert float(schedule(25)) == pytest.approx(0.25, rel=1e-5) and float(schedule(40)) == pytest.approx(0.0, abs=1e-7)
    params = {"kernel": jnp.ones((3, 3, 1, 8)), "scale": jnp.ones(8), "bias": jnp.ones(8), "dense": jnp.ones((8, 2))}
    assert train.decay_mask(params) == {"kernel": True, "scale": False, "bias": False, "dense": True}
    for optimizer in ("sgd", "rmsprop", "adamw"):
        tx, _ = train.create_optimizer(tiny_config(optimizer=optimizer, weight_decay=0.1, warmup_epochs=0), 10)
        zero = jax.tree.map(jnp.zeros_like, params)
        updates, _ = tx.update(zero, tx.init(params), params)
        # With a zero gradient only weight decay moves the parameters, and only the kernels.
        moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
        assert moved == {"kernel": True, "scale": False, "bias": False, "dense": True}, optimizer


def test_moving_average_follows_the_weights_and_batch_statistics():
    """The EMA step: decay min(ema_decay, (1 + step) / (10 + step)) on the weights and the batch-norm
    statistics alike (a NumPy reference of the rule), the RNG state taken as it is; eval reads both averages."""
    cfg = tiny_config(ema_decay=0.999, dropout=0.3, warmup_epochs=0)
    dataset = tiny_digits(train=64, test=8)
    model = train.create_model(cfg, 10, 1)
    tx, schedule = train.create_optimizer(cfg, 2)
    graphdef, state = train.create_train_state(model, tx, ema=True)
    step, evaluate = train.jit_steps(cfg, graphdef, tx, schedule, train.Placement.over(jax.devices()[:1]))
    floats = lambda a: jnp.issubdtype(a.dtype, jnp.floating)  # noqa: E731
    # Copied: the step donates the state's buffers.
    expected = jax.tree.map(lambda a: np.array(a) if floats(a) else a, (state.ema_params, state.ema_model_state))
    for n in range(3):
        images, labels = data.train_batch(dataset, n, batch_size=32, seed=0, augment=False)
        state, _ = step(state, images, labels)
        decay = min(0.999, (1 + n) / (10 + n))  # 0.1, 0.18, 0.25: the average follows the weights at first
        expected = jax.tree.map(
            lambda e, v, decay=decay: np.asarray(e) + (1 - decay) * (np.asarray(v) - np.asarray(e)) if floats(v) else v,
            expected,
            (state.params, state.model_state),
        )
        for got, want in zip(jax.tree.leaves((state.ema_params, state.ema_model_state)), jax.tree.leaves(expected)):
            if floats(got):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    stats = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state.ema_model_state) if "mean" in str(path)]
    live = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state.model_state) if "mean" in str(path)]
    assert stats and any(not np.allclose(a, b) for a, b in zip(stats, live))  # the statistics are averaged too
    # Evaluation runs the averaged network: equal to merging the averages by hand.
    images, labels = data.train_batch(dataset, 0, batch_size=32, seed=0, augment=False)
    sums = evaluate(state, images, labels, np.ones(32, bool))
    by_hand = nnx.merge(graphdef, state.ema_params, state.ema_model_state)
    by_hand.eval()
    correct = np.sum(np.argmax(np.asarray(by_hand(images)), -1) == labels)
    assert float(sums["correct"]) == correct


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    dataset = tiny_digits(train=256, test=64)
    cfg = tiny_config(epochs=2, checkpoint_every=3, ema_decay=0.9, dropout=0.3)  # 8 steps per epoch
    straight = train.train_and_evaluate(cfg, tmp_path / "straight", progress=False, dataset=dataset)
    stopped = train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False, dataset=dataset, stop_after_step=11)
    assert stopped["step"] == 11 and not stopped["finished"]
    # Steps 10 and 11 were done after the last checkpoint (step 9): the rerun redoes them.
    resumed = train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False, dataset=dataset)
    assert resumed["finished"] and resumed["step"] == straight["step"] == 16
    assert resumed["test_loss"] == pytest.approx(straight["test_loss"], rel=1e-6)
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    # The same records, none repeated, equal figures: the resumed epoch's train averages cover all its steps,
    # those run before the interruption included.
    resumed_records, straight_records = _records(tmp_path / "resumed"), _records(tmp_path / "straight")
    assert [sorted(r) for r in resumed_records] == [sorted(r) for r in straight_records]
    for a, b in zip(resumed_records, straight_records):
        assert (a["step"], a.get("epoch")) == (b["step"], b.get("epoch"))
        for key in ("eval_loss", "eval_accuracy", "learning_rate", "train_loss", "train_accuracy", "images"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-6), key
    # The summary's time covers both sessions' epochs, not only the part after the restart.
    epochs = [r for r in resumed_records if "train_seconds" in r]
    assert len(epochs) == 2 and resumed["train_seconds"] == round(sum(r["train_seconds"] for r in epochs), 2)
    assert resumed["images_per_second"] == pytest.approx(16 * 32 / sum(r["train_seconds"] for r in epochs))
    with pytest.raises(ValueError, match=r"holds a different run \(epochs: 2 there, 3 now\)"):
        train.train_and_evaluate(
            tiny_config(epochs=3, checkpoint_every=3, ema_decay=0.9, dropout=0.3),
            tmp_path / "resumed",
            progress=False,
            dataset=dataset,
        )


KILLED_MID_SAVE = """
import os, pathlib, sys
import jax.numpy as jnp
sys.path.insert(0, {examples!r})
from jdw.training import checkpoints, config
store = checkpoints.Checkpoints(pathlib.Path({workdir!r}), config.Config())
store.save(1, {{"w": jnp.full((1000,), 1.0)}})
store._manager.wait_until_finished()
store.save(2, {{"w": jnp.full((16_000_000,), 2.0)}})  # 64 MB, written in the background
os._exit(0)  # killed before the save completes
"""


def test_run_killed_mid_save_keeps_the_previous_checkpoint(tmp_path):
    script = KILLED_MID_SAVE.format(examples=str(EXAMPLES), workdir=str(tmp_path))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    leftovers = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "1" in leftovers
    store = checkpoints.Checkpoints(tmp_path, config.Config())
    restored = store.restore_latest({"w": jnp.zeros((1000,))})
    store.close()
    if "2" in leftovers:  # the background write happened to finish: then it is whole
        pytest.skip(f"the save finished before the kill ({leftovers}); nothing was interrupted")
    np.testing.assert_array_equal(restored["w"], 1.0)


EIGHT_DEVICES = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {examples!r}); sys.path.insert(0, {tests!r})
from training_helpers import tiny_config, tiny_digits
from jdw.training import data, train
assert jax.device_count() == 8, jax.devices()
cfg = tiny_config(batch_size=32, dropout=0.0, optimizer="sgd", learning_rate=0.1, warmup_epochs=0)
dataset = tiny_digits(train=64, test=8)
images, labels = data.train_batch(dataset, 0, batch_size=32, seed=0, augment=False)
to_f64 = lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a
as_f64 = lambda tree: jax.tree.map(to_f64, tree)
results = []
for devices in (jax.devices()[:1], jax.devices()):
    model = train.create_model(cfg, 10, 1)
    if {float64}:  # the same initial values as float32, then float64 throughout
        for _, module in nnx.iter_modules(model):
            if getattr(module, "dtype", None) is not None:
                module.dtype = jnp.float64
        nnx.update(model, as_f64(nnx.state(model)))
    tx, schedule = train.create_optimizer(cfg, 2)
    graphdef, state = train.create_train_state(model, tx, ema=False)
    batch = (images.astype(np.float64) if {float64} else images, labels)
    placement = train.Placement.over(devices)
    step, _ = train.jit_steps(cfg, graphdef, tx, schedule, placement)
    state = jax.device_put(state, placement.replicated)
    for _ in range({steps}):
        state, metrics = step(state, *placement.global_batch(*batch))
    assert len(state.params["classifier"]["kernel"].sharding.device_set) == len(devices)
    is_key = lambda a: jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
    as_numpy = lambda a: np.asarray(jax.random.key_data(a) if is_key(a) else a)
    results.append(jax.tree.map(as_numpy, (state.params, state.model_state, metrics)))
worst = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-30)), *results)
print(json.dumps(max(jax.tree.leaves(worst))))
"""


def _eight_devices_against_one(*, float64: bool, steps: int) -> float:
    script = EIGHT_DEVICES.format(examples=str(EXAMPLES), tests=os.path.dirname(__file__), float64=float64, steps=steps)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_eight_devices_take_the_same_steps_as_one():
    """Two SGD steps with the batch split over 8 devices equal the same steps on 1 device.

    Compared in float64: in float32 this network's batch-norm gradients are only accurate to a few
    percent in some channels (1 device, float32 against float64: up to 5% at the first step), so
    float32 runs on different device counts, which sum in different orders, legitimately differ by
    that much and more after a second step. In float64 the sharded step must agree to rounding.
    """
    assert _eight_devices_against_one(float64=True, steps=2) < 1e-9


def test_main_trains_from_the_command_line(tmp_path, capsys):
    sys.path.insert(0, str(EXAMPLES))
    import train_mobilenet

    argv = [
        "--model",
        "mobilenet_v1",
        "--width",
        "0.25",
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--workdir",
        str(tmp_path),
        "--no-progress",
    ]
    summary = train_mobilenet.main(argv)
    out = capsys.readouterr().out
    assert summary["finished"] and "finished at step 5: test accuracy" in out and "epoch   1/1" in out
    # The compile wait is announced before it starts, and timed.
    assert re.search(r"compiling the train step for cpu \(once per run\)\.\.\.\ncompiled in [0-9.]+ s; training", out)
    written = {name: (tmp_path / name).read_bytes() for name in ("summary.json", "metrics.jsonl", "metrics.png")}
    again = train_mobilenet.main(argv)  # the same command again: already done, nothing retrained or rewritten
    assert again == summary and again["train_seconds"] > 0 and again["images_per_second"] > 0
    assert {name: (tmp_path / name).read_bytes() for name in written} == written
    assert config.Config(**json.loads((tmp_path / "config.json").read_text())).batch_size == 256


@pytest.mark.parametrize("model", ["mobilenet_v1", "mobilenet_v3_small"])
def test_flax_baseline_is_the_same_network(model):

    from jdw.training import flax_baseline

    jdw_model = train.create_model(tiny_config(model=model), 10, 3)
    baseline = flax_baseline.with_flax_grouped_conv(jdw_model)
    kinds = lambda m: {type(module).__name__ for _, module in nnx.iter_modules(m)}
    assert "DepthwiseConv" in kinds(jdw_model) and "DepthwiseConv" not in kinds(baseline)
    count = lambda m: sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert count(baseline) == count(jdw_model)
    jdw_model.eval()
    baseline.eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    forward = nnx.jit(lambda m, x: m(x))  # op by op, each model's forward takes many times its compile
    np.testing.assert_allclose(forward(baseline, x), forward(jdw_model, x), rtol=1e-4, atol=1e-5)


def test_flax_baseline_refuses_a_fused_activation():
    """nnx.Conv has no activation: swapping it in for a layer that fuses one would drop it silently."""

    from jdw.training import flax_baseline

    layer = jdw.nnx.DepthwiseConv(4, 3, activation="relu6", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"fuses activation='relu6', which nnx.Conv has no place for"):
        flax_baseline.grouped_conv_from(layer)


@pytest.mark.parametrize(
    "flag, value", [("--learning-rate", "inf"), ("--weight-decay", "nan"), ("--warmup-epochs", "inf")]
)
def test_non_finite_flags_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_flags([flag, value])
    assert exit_info.value.code == 2
    assert f"{flag[2:].replace('-', '_')}={float(value)} must be a finite number" in capsys.readouterr().err


def test_diverging_run_stops_with_an_error_and_keeps_valid_files(tmp_path):
    cfg = tiny_config(epochs=2, learning_rate=1e30, optimizer="sgd", warmup_epochs=0.0, checkpoint_every=2)
    with pytest.raises(train.TrainingError, match=r"the training loss became (nan|inf) by step \d+: the run diverged"):
        train.train_and_evaluate(cfg, tmp_path, progress=False, dataset=tiny_digits(train=128, test=32))
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():  # strict JSON: no NaN or Infinity
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))
    store = checkpoints.Checkpoints(tmp_path, cfg)
    latest = store.latest_step()
    store.close()
    assert latest is None  # the diverged state was never saved (it diverges at its first steps)


def test_folder_of_one_class_is_refused(tmp_path):
    from PIL import Image

    (tmp_path / "cats").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "cats" / f"{i}.png")
    with pytest.raises(data.DataError, match=r"one class sub-folder \('cats'\); a classifier needs at least 2"):
        data.load_image_folder(str(tmp_path), image_size=8)


def test_config_without_a_checkpoint_does_not_bind_the_workdir(tmp_path):
    first, second = tiny_config(epochs=2), tiny_config(epochs=3)
    checkpoints.Checkpoints(tmp_path, first).close()  # a run that stopped before its first checkpoint
    checkpoints.Checkpoints(tmp_path, second).close()
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 3
    store = checkpoints.Checkpoints(tmp_path, second)
    store.save(1, {"w": jnp.ones(3)})
    store.close()
    with pytest.raises(ValueError, match="holds a different run"):
        checkpoints.Checkpoints(tmp_path, first)


def test_a_failed_checkpoint_write_is_one_clear_error(tmp_path, monkeypatch):
    store = checkpoints.Checkpoints(tmp_path, tiny_config())
    store.save(1, {"w": jnp.ones(3)})
    store._manager.wait_until_finished()

    def disk_full(*args, **kwargs):
        (store.directory / "2.orbax-checkpoint-tmp-1234").mkdir()
        raise ValueError("Traceback line\nRESOURCE_EXHAUSTED: Error writing to file: No space left on device\nmore")

    monkeypatch.setattr(store._manager, "save", disk_full)
    with pytest.raises(checkpoints.CheckpointError) as error:
        store.save(2, {"w": jnp.ones(3)})
    message = str(error.value)
    assert "\n" not in message and str(store.directory) in message and "No space left on device" in message
    assert "the checkpoint of step 1 is kept" in message
    assert sorted(p.name for p in store.directory.iterdir()) == ["1"]


def _main_error(argv, capsys) -> str:
    sys.path.insert(0, str(EXAMPLES))
    import train_mobilenet

    with pytest.raises(SystemExit) as exit_info:
        train_mobilenet.main([*argv, "--no-progress"])
    assert exit_info.value.code not in (0, None)
    return str(exit_info.value.code)


def test_command_line_errors_are_one_line(tmp_path, capsys):
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    message = _main_error(["--workdir", str(blocked / "run"), "--epochs", "1"], capsys)
    assert message.startswith("train_mobilenet.py: error: ") and "a_file" in message
    message = _main_error(["--workdir", str(tmp_path / "run"), "--batch-size", "4096"], capsys)
    assert "batch_size=4096 is larger than the training set (1438 images)" in message
    message = _main_error(["--dataset", "folder", "--data-dir", str(tmp_path / "missing")], capsys)
    assert message == f"train_mobilenet.py: error: image folder {tmp_path / 'missing'} does not exist"


# One of each family (the other sizes differ only by their tables, which tests/test_model_zoo.py counts).
@pytest.mark.parametrize(
    "model",
    ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
     "efficientnet_v2_s", "convnext_tiny", "xception"],
)  # fmt: skip
def test_every_model_builds_from_the_config(model):
    """Each zoo family by name, with the options the config passes (those it takes), on the digits' one channel."""
    cfg = tiny_config(model=model, image_size=32)
    built = nnx.eval_shape(lambda: train.create_model(cfg, 10, 1))
    assert type(built) is config.MODELS[model] and built.in_features == 1 and built.num_classes == 10
    logits = nnx.eval_shape(lambda m, x: m(x), built, jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32))
    assert logits.shape == (2, 10)


def test_a_convnext_trains(tmp_path):
    """The training loop is not MobileNet-specific: a narrow ConvNeXt (layer norms, no batch statistics) learns."""
    cfg = tiny_config(model="convnext_tiny", image_size=16, epochs=2, learning_rate=3e-3)
    summary = train.train_and_evaluate(cfg, tmp_path, progress=False, dataset=tiny_digits(train=256, test=64))
    assert summary["finished"]
    trains = [r for r in _records(tmp_path) if "train_loss" in r]
    assert trains[-1]["train_loss"] < trains[0]["train_loss"]


def test_stochastic_depth_is_refused_where_there_is_none():
    with pytest.raises(ValueError, match="model='xception' has no stochastic depth"):
        tiny_config(model="xception", stochastic_depth_rate=0.1)

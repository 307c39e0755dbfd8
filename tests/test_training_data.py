"""The training example's data loaders (on small files written in each format) and its flags."""

from __future__ import annotations

import io
import pickle
import re
import tarfile

import numpy as np
import pytest

from jdw.training import config, data


def test_digits_are_bundled_and_split_by_class():
    dataset = data.load_digits()
    assert dataset.train_images.shape == (1438, 8, 8, 1) and dataset.test_images.shape == (359, 8, 8, 1)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_images.max() == 255
    assert dataset.num_classes == 10
    # Stratified: every class is about 20% test.
    fractions = np.bincount(dataset.test_labels) / (
        np.bincount(dataset.test_labels) + np.bincount(dataset.train_labels)
    )
    np.testing.assert_allclose(fractions, 0.2, atol=0.01)
    resized = data.load("digits", image_size=32)
    assert resized.train_images.shape == (1438, 32, 32, 1)
    np.testing.assert_array_equal(resized.train_labels, dataset.train_labels)


def _cifar_batch(rng, n):
    return pickle.dumps(
        {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
    )


def _write_cifar_tarball(path, rng, *, skip=None, corrupt=None):
    with tarfile.open(path, "w:gz") as archive:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            if name == skip:
                continue
            raw = b"not a pickle" if name == corrupt else _cifar_batch(rng, 4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))


def test_cifar10_from_tarball_and_from_extracted_folder(tmp_path, rng):
    _write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", rng)
    dataset = data.load_cifar10(str(tmp_path), download=False)
    assert dataset.train_images.shape == (20, 32, 32, 3) and dataset.test_images.shape == (4, 32, 32, 3)
    assert dataset.class_names[0] == "airplane"
    # The pickled rows are channel-major (R plane, G plane, B plane): pixel (0, 0) of image 0.
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as archive:
        archive.extractall(tmp_path / "x", filter="data")
        first = pickle.loads((tmp_path / "x/cifar-10-batches-py/data_batch_1").read_bytes())[b"data"][0]
    np.testing.assert_array_equal(dataset.train_images[0, 0, 0], first[[0, 1024, 2048]])
    from_folder = data.load_cifar10(str(tmp_path / "x"), download=False)
    np.testing.assert_array_equal(from_folder.train_images, dataset.train_images)
    np.testing.assert_array_equal(
        data.load_cifar10(str(tmp_path / "cifar-10-python.tar.gz")).test_labels, dataset.test_labels
    )


def test_cifar10_errors_name_the_file(tmp_path, rng):
    with pytest.raises(data.DataError, match=re.escape(f"neither {tmp_path}/cifar-10-python.tar.gz nor")):
        data.load_cifar10(str(tmp_path), download=False)
    _write_cifar_tarball(tmp_path / "missing.tar.gz", rng, skip="data_batch_3")
    with pytest.raises(data.DataError, match="missing.tar.gz has no cifar-10-batches-py/data_batch_3"):
        data.load_cifar10(str(tmp_path / "missing.tar.gz"))
    _write_cifar_tarball(tmp_path / "corrupt.tar.gz", rng, corrupt="test_batch")
    with pytest.raises(data.DataError, match=r"corrupt.tar.gz:test_batch is not a CIFAR-10 batch"):
        data.load_cifar10(str(tmp_path / "corrupt.tar.gz"))
    (tmp_path / "truncated.tar.gz").write_bytes((tmp_path / "corrupt.tar.gz").read_bytes()[:100])
    with pytest.raises(data.DataError, match="truncated.tar.gz is not a readable .tar.gz"):
        data.load_cifar10(str(tmp_path / "truncated.tar.gz"))


def _write_images(folder, classes, per_class, rng, size=(10, 7)):
    from PIL import Image

    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")


def test_image_folder_with_and_without_test_split(tmp_path, rng):
    _write_images(tmp_path / "split/train", ["cat", "dog"], 3, rng)
    _write_images(tmp_path / "split/test", ["cat", "dog"], 2, rng)
    dataset = data.load_image_folder(str(tmp_path / "split"), image_size=12)
    assert dataset.class_names == ("cat", "dog")
    assert dataset.train_images.shape == (6, 12, 12, 3) and dataset.test_images.shape == (4, 12, 12, 3)
    np.testing.assert_array_equal(dataset.train_labels, [0, 0, 0, 1, 1, 1])
    _write_images(tmp_path / "flat", ["a", "b", "c"], 5, rng)
    flat = data.load("folder", data_dir=str(tmp_path / "flat"), image_size=8)
    assert len(flat.train_labels) == 12 and np.bincount(flat.test_labels).tolist() == [1, 1, 1]


def test_image_folder_errors_name_the_file(tmp_path, rng):
    with pytest.raises(data.DataError, match=re.escape(f"image folder {tmp_path / 'nope'} does not exist")):
        data.load_image_folder(str(tmp_path / "nope"), image_size=8)
    with pytest.raises(data.DataError, match="needs --data-dir"):
        data.load("folder")
    _write_images(tmp_path / "bad", ["a", "b"], 5, rng)
    (tmp_path / "bad/b/3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(data.DataError, match=re.escape(f"cannot read image {tmp_path / 'bad/b/3.png'}")):
        data.load_image_folder(str(tmp_path / "bad"), image_size=8)
    _write_images(tmp_path / "mismatch/train", ["a", "b"], 2, rng)
    _write_images(tmp_path / "mismatch/test", ["a", "c"], 2, rng)
    with pytest.raises(data.DataError, match=re.escape("has classes ['a', 'c'] but the training split has ['a', 'b']")):
        data.load_image_folder(str(tmp_path / "mismatch"), image_size=8)


def test_train_batches_are_a_function_of_the_step(rng):
    dataset = data.Dataset(
        rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8),
        np.arange(50, dtype=np.int32) % 10,
        np.zeros((0, 8, 8, 3), np.uint8),
        np.zeros(0, np.int32),
        tuple("0123456789"),
    )
    epoch = [data.train_batch(dataset, s, batch_size=16, seed=1, augment=False)[1] for s in range(3)]
    assert len(set(np.concatenate(epoch).tolist())) == 10 and len(np.concatenate(epoch)) == 48
    again = data.train_batch(dataset, 4, batch_size=16, seed=1, augment=True)
    np.testing.assert_array_equal(again[0], data.train_batch(dataset, 4, batch_size=16, seed=1, augment=True)[0])
    assert again[0].dtype == np.float32 and -1 <= again[0].min() and again[0].max() <= 1


def test_crop_and_flip_move_pixels_without_inventing_them(rng):
    images = rng.integers(1, 256, (64, 6, 6, 1), dtype=np.uint8)
    out = data.random_crop_and_flip(images, np.random.default_rng(0), padding=2)
    assert out.shape == images.shape
    for original, moved in zip(images, out):
        values = set(moved.ravel().tolist()) - {0}
        assert values <= set(original.ravel().tolist())
    assert any(np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images))  # some are flipped, unshifted


def test_eval_batches_pad_and_mask():
    images, labels = np.zeros((5, 2, 2, 1), np.uint8), np.arange(5, dtype=np.int32)
    batches = list(data.eval_batches(images, labels, 2))
    assert [b[2].tolist() for b in batches] == [[True, True], [True, True], [True, False]]
    assert batches[-1][0].shape == (2, 2, 2, 1)


def test_flags_take_dataset_defaults_and_overrides():
    cfg, flags = config.parse_flags([])
    assert cfg == config.Config() and flags.workdir == "runs/mobilenet"
    cifar, _ = config.parse_flags(["--dataset", "cifar10", "--epochs", "3", "--implementation", "auto"])
    assert (cifar.optimizer, cifar.learning_rate, cifar.batch_size, cifar.epochs) == ("sgd", 0.1, 128, 3)
    assert cifar.small_inputs and cifar.augment and cifar.implementation is None
    cfg, _ = config.parse_flags(["--model", "mobilenet_v3_small", "--augment", "false", "--width", "0.75"])
    assert (cfg.model, cfg.augment, cfg.width) == ("mobilenet_v3_small", False, 0.75)


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        config.parse_flags(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--model",
        "--dataset",
        "--data-dir",
        "--epochs",
        "--batch-size",
        "--learning-rate",
        "--width",
        "--implementation",
        "--workdir",
        "--seed",
    ):
        assert flag in text
    flat = " ".join(text.split())  # argparse wraps lines
    assert "default: None" not in flat and "%%" not in flat and "(default: None) (default" not in flat
    assert "94% test accuracy" in flat
    digits, cifar = config.config_for("digits"), config.config_for("cifar10")
    # Each flag shows its real default for the default dataset, and the presets that differ.
    assert f"architecture (default: {digits.model})" in flat
    assert f"(default: {digits.epochs}; cifar10: {cifar.epochs}, folder: 30)" in flat
    assert f"(default: {digits.batch_size}; cifar10: {cifar.batch_size})" in flat
    assert "(default: auto)" in flat and "(default: runs/mobilenet)" in flat


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "epochs=0 must be at least 1"),
        (["--label-smoothing", "1.5"], "label_smoothing=1.5 must be in [0, 1)"),
        (["--learning-rate", "-1"], "learning_rate=-1.0 must be positive"),
    ],
)
def test_bad_flags_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        config.parse_flags(argv)
    assert message in capsys.readouterr().err


def test_the_progress_bar_counts_finished_steps_not_dispatched_ones():
    from jdw.training import reporting

    class Step:  # stands in for a step's output array: records when the bar waits for it
        waited = []

        def __init__(self, number):
            self.number = number

        def block_until_ready(self):
            Step.waited.append(self.number)
            return self

    bar = reporting.Progress(10, 0, enabled=True)
    bar.update(64, Step(1))
    assert Step.waited == [] and bar._bar.n == 0  # step 1 is only dispatched: one step stays queued
    bar.update(64, Step(2))
    assert Step.waited == [1] and bar._bar.n == 1  # step 2's dispatch waits for step 1, which then counts
    bar.flush()
    assert Step.waited == [1, 2] and bar._bar.n == 2
    bar.close()
    assert Step.waited == [1, 2]  # nothing left to wait for

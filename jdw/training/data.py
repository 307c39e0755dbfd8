"""Datasets as in-memory arrays: scikit-learn's digits (offline), CIFAR-10, a folder of images.

Every loader returns a :class:`Dataset` of ``uint8`` images ``(N, H, W, C)`` and ``int32``
labels; :func:`batches` cuts one epoch into batches in a seeded order, with optional random
crops and flips, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import pickle
import tarfile
import urllib.request
from collections.abc import Iterator

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class DataError(ValueError):
    """A dataset is missing, corrupt or not in the expected format; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits in memory.

    Attributes:
      train_images: ``uint8 (N, H, W, C)``.
      train_labels: ``int32 (N,)``.
      test_images: ``uint8 (M, H, W, C)``.
      test_labels: ``int32 (M,)``.
      class_names: one name per label.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


def load(name: str, *, data_dir: str | None = None, image_size: int = 32, seed: int = 0) -> Dataset:
    """Loads dataset ``name`` ("digits", "cifar10" or "folder") resized to ``image_size``."""
    if name == "digits":
        dataset = load_digits(seed=seed)
    elif name == "cifar10":
        dataset = load_cifar10(data_dir)
    elif name == "folder":
        if data_dir is None:
            raise DataError("dataset 'folder' needs --data-dir: a folder with one sub-folder of images per class")
        return load_image_folder(data_dir, image_size=image_size, seed=seed)
    else:
        raise DataError(f"unknown dataset {name!r}; expected 'digits', 'cifar10' or 'folder'")
    return resize(dataset, image_size)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 scanned 8x8 handwritten digits (bundled with it: no download).

    A stratified split: ``test_fraction`` of every class is held out for testing. Pixel values
    0-16 are scaled to 0-255, one channel.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    train, test = _stratified_split(labels, test_fraction, seed)
    return Dataset(images[train], labels[train], images[test], labels[test], tuple(map(str, range(10))))


def load_cifar10(data_dir: str | None = None, *, download: bool = True) -> Dataset:
    """CIFAR-10 from its standard Python version (``cifar-10-python.tar.gz``).

    Args:
      data_dir: a folder holding the tarball or its extracted ``cifar-10-batches-py``,
        or the path of the tarball itself. Without one (or when the folder has neither),
        the tarball is downloaded into ``data_dir`` (default ``~/.cache/jdw``).
      download: allow the download.
    """
    root = pathlib.Path(data_dir).expanduser() if data_dir else pathlib.Path("~/.cache/jdw").expanduser()
    if root.is_file():
        return _cifar10_from_tarball(root)
    extracted = root / "cifar-10-batches-py"
    if extracted.is_dir():

        def read(name):
            path = extracted / name
            if not path.is_file():
                raise DataError(f"CIFAR-10 file missing: {path}")
            return _unpickle_batch(path.read_bytes(), path)

        return _cifar10_from_batches(read)
    tarball = root / "cifar-10-python.tar.gz"
    if not tarball.is_file():
        if not download:
            raise DataError(f"CIFAR-10 not found: neither {tarball} nor {extracted} exists")
        root.mkdir(parents=True, exist_ok=True)
        print(f"downloading {CIFAR10_URL} to {tarball}")
        try:
            urllib.request.urlretrieve(CIFAR10_URL, f"{tarball}.part")
        except OSError as error:
            raise DataError(
                f"could not download CIFAR-10 from {CIFAR10_URL} ({error}); put cifar-10-python.tar.gz in "
                f"--data-dir (now {root}) instead"
            ) from error
        pathlib.Path(f"{tarball}.part").rename(tarball)
    return _cifar10_from_tarball(tarball)


def _cifar10_from_tarball(path: pathlib.Path) -> Dataset:
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = {pathlib.PurePosixPath(m.name).name: m for m in archive.getmembers() if m.isfile()}

            def read(name):
                if name not in members:
                    raise DataError(f"{path} has no cifar-10-batches-py/{name}: not the CIFAR-10 Python tarball")
                return _unpickle_batch(archive.extractfile(members[name]).read(), f"{path}:{name}")

            return _cifar10_from_batches(read)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{path} is not a readable .tar.gz ({error}); delete it and download it again") from error


def _unpickle_batch(raw: bytes, where) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.load(io.BytesIO(raw), encoding="bytes")
        data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"], np.int32)
    except Exception as error:  # pickle raises many kinds of errors on a corrupt file
        raise DataError(f"{where} is not a CIFAR-10 batch ({type(error).__name__}: {error})") from error
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{where}: expected data (N, 3072) and N labels, got {data.shape} and {len(labels)} labels")
    if labels.size and not 0 <= labels.min() <= labels.max() < 10:
        raise DataError(f"{where}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar10_from_batches(read) -> Dataset:
    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    test_images, test_labels = read("test_batch")
    return Dataset(
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
        CIFAR10_CLASSES,
    )


def load_image_folder(data_dir: str, *, image_size: int, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A user's images: ``data_dir/CLASS/*.png`` or ``data_dir/{train,test}/CLASS/*.png``.

    Images are converted to RGB and resized to ``image_size`` squares (whole image, no crop).
    Without ``train``/``test`` sub-folders, ``test_fraction`` of every class is held out.
    """
    from PIL import Image, UnidentifiedImageError

    root = pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")

    def read_split(folder: pathlib.Path, class_names: tuple[str, ...] | None):
        classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        if not classes:
            raise DataError(f"{folder} has no class sub-folders; expected {folder}/CLASS_NAME/IMAGE.png")
        if class_names is None and len(classes) < 2:
            raise DataError(
                f"{folder} has one class sub-folder ({classes[0]!r}); a classifier needs at least 2 classes"
            )
        if class_names is not None and classes != class_names:
            raise DataError(f"{folder} has classes {list(classes)} but the training split has {list(class_names)}")
        images, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{folder / name} has no images ({', '.join(IMAGE_SUFFIXES)})")
            for file in files:
                try:
                    with Image.open(file) as image:
                        image = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                        images.append(np.asarray(image, np.uint8))
                except (UnidentifiedImageError, OSError, SyntaxError) as error:
                    raise DataError(f"cannot read image {file}: {error}") from error
                labels.append(label)
        return np.stack(images), np.asarray(labels, np.int32), classes

    if (root / "train").is_dir():
        train_images, train_labels, classes = read_split(root / "train", None)
        test_dir = next((root / name for name in ("test", "val", "validation") if (root / name).is_dir()), None)
        if test_dir is None:
            raise DataError(f"{root} has a train/ folder but no test/ (or val/) folder beside it")
        test_images, test_labels, _ = read_split(test_dir, classes)
        return Dataset(train_images, train_labels, test_images, test_labels, classes)
    images, labels, classes = read_split(root, None)
    train, test = _stratified_split(labels, test_fraction, seed)
    if not len(test):
        raise DataError(f"{root}: too few images to hold out {test_fraction:.0%} for testing; add a test/ folder")
    return Dataset(images[train], labels[train], images[test], labels[test], classes)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(len(members) * test_fraction))
        test.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def resize(dataset: Dataset, size: int) -> Dataset:
    """Resizes every image to ``size x size`` (bilinear; unchanged if already that size)."""
    if dataset.image_shape[:2] == (size, size):
        return dataset
    import jax

    def one(images):
        out = jax.image.resize(images.astype(np.float32), (len(images), size, size, images.shape[-1]), "bilinear")
        return np.asarray(np.clip(np.round(out), 0, 255), np.uint8)

    return dataclasses.replace(dataset, train_images=one(dataset.train_images), test_images=one(dataset.test_images))


def normalize(images: np.ndarray) -> np.ndarray:
    """``uint8`` pixels to ``float32`` in [-1, 1], the range the MobileNets expect."""
    return images.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full training batches in one epoch (the last partial batch is dropped)."""
    return num_examples // batch_size


def train_batch(
    dataset: Dataset, step: int, *, batch_size: int, seed: int, augment: bool, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Training batch number ``step`` (counted from the start of training), normalised.

    The order within each epoch is a seeded permutation and the augmentation is seeded by the
    step, so any step's batch can be produced without the ones before it: resuming is exact.
    """
    per_epoch = steps_per_epoch(len(dataset.train_labels), batch_size)
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(dataset.train_labels))
    chosen = order[index * batch_size : (index + 1) * batch_size]
    images, labels = dataset.train_images[chosen], dataset.train_labels[chosen]
    if augment:
        images = random_crop_and_flip(images, np.random.default_rng([seed, 1_000_003, step]), flip=flip)
    return normalize(images), labels


def random_crop_and_flip(
    images: np.ndarray, rng: np.random.Generator, padding: int = 4, *, flip: bool = True
) -> np.ndarray:
    """A random shift of up to ``padding`` pixels (zero-padded crop); with ``flip``, half the images mirrored."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dy, dx = rng.integers(0, 2 * padding + 1, (2, n))
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    if flip:
        mirrored = rng.random(n) < 0.5
        cols = np.where(mirrored[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Every example once, in order; the last batch padded, with a mask of the real examples."""
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        mask = np.ones(len(y), bool)
        if len(y) < batch_size:
            pad = batch_size - len(y)
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
            mask = np.concatenate([mask, np.zeros(pad, bool)])
        yield normalize(x), y, mask

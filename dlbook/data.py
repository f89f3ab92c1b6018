"""Real datasets, offline first.

- :func:`load_digits`: scikit-learn's 8x8 handwritten digits (ships with scikit-learn).
- :func:`load_fashion_mnist`: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), else from the dlbook cache, else downloaded into the cache.
- :func:`load_mnist`: MNIST from the cache, else downloaded into it.
- :func:`load_cifar10`: CIFAR-10 (the authors' binary version) from the cache, else downloaded into it;
  :func:`cifar10_available` says whether it is cached, without downloading.

Downloads go through pooch: each file is checked against its SHA-256, written to a temporary name and
moved into place, and a corrupt cached file is detected and fetched again. A loader never swaps in
another dataset: when the data is missing and cannot be fetched it raises
:class:`DatasetNotFoundError` saying how to get it.
"""

from __future__ import annotations

import gzip
import os
import struct
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

CACHE_ENV = "DLBOOK_DATA"
OFFLINE_ENV = "DLBOOK_OFFLINE"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# Upstream files and their SHA-256 (the gzip files exactly as the authors publish them).
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
    "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
    "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}
FASHION_MNIST_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# The binary version from the authors' page (https://www.cs.toronto.edu/~kriz/cifar.html): no pickle.
CIFAR10_FILES = {"cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"}
CIFAR10_URLS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_MEMBERS = {
    "train": tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("cifar-10-batches-bin/test_batch.bin",),
}
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue 32x32 planes

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not on this machine and could not be downloaded."""


class DataSplit(NamedTuple):
    """A train/test split: ``X_train (N, ...)``, ``y_train (N,)``, ``X_test (M, ...)``, ``y_test (M,)``."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def cache_dir() -> Path:
    """Return the download cache: ``$DLBOOK_DATA`` or ``~/.cache/dlbook``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dlbook").expanduser()


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> DataSplit:
    """Return scikit-learn's digits as a stratified, seeded train/test split.

    ``X``: float32 of shape (N, 64), pixel intensities scaled to [0, 1]; ``y``: int64 of shape (N,),
    classes 0-9. 1797 images in all; the split is the same on every machine for the same seed.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    digits = sk_load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return DataSplit(X_tr, y_tr, X_te, y_te)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Return the array stored in an IDX file (gzipped or not), e.g. images (N, 28, 28) uint8."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"{path} is not a complete gzip file ({err}); delete it and fetch it again") from err
    if len(data) < 4:
        raise ValueError(f"{path} is not an IDX file: only {len(data)} bytes")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4].hex()})")
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: the header announces {ndim} dimension sizes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} values")
    return body.reshape(shape).copy()  # writable: torch.as_tensor warns on read-only buffers


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def fetch_files(
    name: str,
    files: dict[str, str],
    base_urls: tuple[str, ...],
    directory: Path,
) -> dict[str, Path]:
    """Return local paths of ``files`` (file name -> SHA-256) under ``directory``, downloading as needed.

    Each file is verified against its hash; a missing or corrupt file is (re)downloaded from the
    first mirror in ``base_urls`` that works, through pooch (temporary file, then rename).
    """
    import pooch

    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for fname, sha256 in files.items():
        target = directory / fname
        if target.exists() and pooch.file_hash(str(target)) == sha256:
            paths[fname] = target
            continue
        if _offline():
            raise DatasetNotFoundError(_missing_message(name, directory, f"{OFFLINE_ENV} is set"))
        errors = []
        for base in base_urls:
            try:
                path = pooch.retrieve(
                    url=base + fname,
                    known_hash=f"sha256:{sha256}",
                    fname=fname,
                    path=directory,
                    progressbar=False,
                )
                paths[fname] = Path(path)
                break
            except Exception as err:  # noqa: BLE001 - network errors come in many types
                errors.append(f"{base}{fname}: {type(err).__name__}: {err}")
        else:
            raise DatasetNotFoundError(_missing_message(name, directory, "; ".join(errors)))
    return paths


def _missing_message(name: str, directory: Path, reason: str) -> str:
    hint = ""
    if name == "Fashion-MNIST":
        hint = (
            "  * on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
            f"(files land in {DEBIAN_FASHION_MNIST})\n"
        )
    files = "the four *-idx?-ubyte.gz files"
    if name == "CIFAR-10":
        files = f"cifar-10-binary.tar.gz (the binary version, from {CIFAR10_URLS[0]}cifar.html)"
    return (
        f"{name} is not available on this machine and could not be downloaded ({reason}).\n"
        f"To get it:\n{hint}"
        f"  * connect to the internet and run the cell again (files are cached in {directory}), or\n"
        f"  * copy {files} into {directory} (set ${CACHE_ENV} to move the cache)."
    )


def _load_idx_pair(paths: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = _SPLIT_PREFIX[split]
    images = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"])
    labels = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"]).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def _check_split(split: str) -> None:
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return Fashion-MNIST ``(images, labels)``: uint8 (N, 28, 28) and int64 (N,).

    ``split`` is ``"train"`` (60,000 images) or ``"test"`` (10,000). Looks in the Debian package's
    directory first, then the dlbook cache, then downloads (SHA-256 checked). Class names are in
    :data:`FASHION_MNIST_CLASSES`.
    """
    _check_split(split)
    prefix = _SPLIT_PREFIX[split]
    wanted = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    if all((DEBIAN_FASHION_MNIST / f).exists() for f in wanted):
        # Debian recompresses the files (other gzip bytes, same content), so they are checked by
        # their IDX headers and sizes rather than by the upstream hashes.
        images, labels = _load_idx_pair({f: DEBIAN_FASHION_MNIST / f for f in wanted}, split)
    else:
        files = {f: FASHION_MNIST_FILES[f] for f in wanted}
        paths = fetch_files("Fashion-MNIST", files, FASHION_MNIST_URLS, cache_dir() / "fashion-mnist")
        images, labels = _load_idx_pair(paths, split)
    expected = 60000 if split == "train" else 10000
    if images.shape != (expected, 28, 28):
        raise ValueError(f"Fashion-MNIST {split} images have shape {images.shape}, expected ({expected}, 28, 28)")
    return images, labels


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return MNIST ``(images, labels)``: uint8 (N, 28, 28) and int64 (N,), from the cache or downloaded."""
    _check_split(split)
    prefix = _SPLIT_PREFIX[split]
    wanted = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    files = {f: MNIST_FILES[f] for f in wanted}
    paths = fetch_files("MNIST", files, MNIST_URLS, cache_dir() / "mnist")
    return _load_idx_pair(paths, split)


def read_cifar_binary(data: bytes, name: str = "CIFAR-10 batch") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` from CIFAR-10's binary format: uint8 (N, 3, 32, 32) and int64 (N,).

    Each record is 3,073 bytes: the label (0-9), then 1,024 red, 1,024 green and 1,024 blue values,
    each plane row by row. ``name`` goes into the error message.
    """
    if len(data) == 0 or len(data) % CIFAR10_RECORD_BYTES:
        raise ValueError(f"{name} is not in CIFAR-10's binary format: {len(data)} bytes is not a positive "
                         f"multiple of {CIFAR10_RECORD_BYTES} (one label byte + 3x32x32 pixels)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{name} has label {int(labels.max())}; CIFAR-10 labels are 0-9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _cifar10_archive() -> Path:
    return cache_dir() / "cifar-10" / "cifar-10-binary.tar.gz"


def cifar10_available() -> bool:
    """Return True when CIFAR-10's archive is already in the cache (nothing is downloaded or checked)."""
    return _cifar10_archive().is_file()


def load_cifar10(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return CIFAR-10 ``(images, labels)``: uint8 (N, 3, 32, 32) (RGB, channels first) and int64 (N,).

    ``split`` is ``"train"`` (50,000 images, the five training batches in order) or ``"test"``
    (10,000). Reads ``cifar-10-binary.tar.gz`` from the dlbook cache (``$DLBOOK_DATA/cifar-10``),
    downloading it first (162 MiB, SHA-256 checked) if it is missing. Class names are in
    :data:`CIFAR10_CLASSES`.
    """
    if split not in CIFAR10_MEMBERS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    paths = fetch_files("CIFAR-10", CIFAR10_FILES, CIFAR10_URLS, _cifar10_archive().parent)
    archive = paths["cifar-10-binary.tar.gz"]
    images, labels = [], []
    with tarfile.open(archive, "r:gz") as tar:
        for member in CIFAR10_MEMBERS[split]:
            try:
                f = tar.extractfile(member)
            except KeyError:
                f = None
            if f is None:
                raise ValueError(f"{archive} has no file {member}: is it CIFAR-10's binary version?")
            with f:
                x, y = read_cifar_binary(f.read(), f"{archive}:{member}")
            images.append(x)
            labels.append(y)
    return np.concatenate(images), np.concatenate(labels)

"""dlbook.data: digits split, IDX parsing, verified downloads from a local server, offline errors.

No test touches the internet or ~/.cache: downloads come from an http.server on 127.0.0.1 and
every cache directory is a tmp_path.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from dlbook import data
from dlbook.data import DatasetNotFoundError

# ----------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_dataset(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 6, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 3, dtype=np.uint8),
    }


# ----------------------------------------------------------------------------- load_digits


def test_load_digits_shapes_dtypes_range():
    split = data.load_digits()
    assert isinstance(split, data.DataSplit)
    assert split.X_train.shape == (1347, 64) and split.X_test.shape == (450, 64)
    assert split.y_train.shape == (1347,) and split.y_test.shape == (450,)
    assert split.X_train.dtype == np.float32 and split.y_train.dtype == np.int64
    for X in (split.X_train, split.X_test):
        assert X.min() >= 0.0 and X.max() <= 1.0 and X.max() == 1.0
    assert set(np.unique(split.y_train)) == set(range(10))


def test_load_digits_is_stratified_and_deterministic():
    a, b, c = data.load_digits(seed=0), data.load_digits(seed=0), data.load_digits(seed=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.y_test, c.y_test)
    all_y = np.concatenate([a.y_train, a.y_test])
    overall = np.bincount(all_y, minlength=10) / len(all_y)
    test_frac = np.bincount(a.y_test, minlength=10) / len(a.y_test)
    np.testing.assert_allclose(test_frac, overall, atol=0.005)
    # Nothing lost or duplicated: the split is a partition of the 1797 images.
    assert len(all_y) == 1797
    rows = {r.tobytes() for r in np.concatenate([a.X_train, a.X_test])}
    from sklearn.datasets import load_digits as sk_load

    assert rows == {(r / 16.0).astype(np.float32).tobytes() for r in sk_load().data}


def test_load_digits_test_fraction():
    split = data.load_digits(test_fraction=0.5)
    assert len(split.y_test) == 899 and len(split.y_train) == 898


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_load_digits_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=fraction)


# ----------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("shape", [(4, 28, 28), (7,), (2, 3, 5), (1, 1)])
def test_read_idx_round_trip(tmp_path, compress, shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    raw = idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = data.read_idx(path)
    assert got.dtype == np.uint8 and got.shape == shape
    assert got.flags.writeable, "torch.as_tensor warns on read-only arrays; read_idx must return a writable one"
    np.testing.assert_array_equal(got, array)
    assert np.array_equal(data.read_idx(str(path)), array)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "only 0 bytes"),
        (b"\x00\x00\x08", "only 3 bytes"),
        (struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\x00" * 4, "unsigned-byte"),
        (struct.pack(">HBB", 1, 0x08, 1) + struct.pack(">I", 1) + b"\x00", "unsigned-byte"),
        (b"PK\x03\x04" + b"\x00" * 20, "unsigned-byte"),
        (struct.pack(">HBBII", 0, 0x08, 2, 3, 4) + b"\x00" * 11, "truncated"),
        (struct.pack(">HBBI", 0, 0x08, 1, 5), "truncated"),
    ],
    ids=["empty", "short", "float-dtype", "bad-magic", "zip", "truncated-body", "no-body"],
)
def test_read_idx_rejects_bad_files(tmp_path, compress, content, match):
    path = tmp_path / ("bad.idx.gz" if compress else "bad.idx")
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(ValueError, match=match):
        data.read_idx(path)


def test_read_idx_truncated_inside_header_raises_value_error(tmp_path):
    path = tmp_path / "short.idx"
    path.write_bytes(struct.pack(">HBB", 0, 0x08, 3) + b"\x00\x00")
    with pytest.raises(ValueError):
        data.read_idx(path)


@pytest.mark.parametrize("kind", ["cut-gzip-stream", "not-gzip"])
def test_read_idx_corrupt_gzip_raises_value_error(tmp_path, kind):
    raw = idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))
    path = tmp_path / "x.idx.gz"
    blob = gzip.compress(raw)
    path.write_bytes(blob[: len(blob) // 2] if kind == "cut-gzip-stream" else raw)
    with pytest.raises(ValueError):
        data.read_idx(path)


# ----------------------------------------------------------------------------- local HTTP server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("DLBOOK_OFFLINE", raising=False)


@pytest.fixture
def server(tmp_path, no_proxy):
    """Serve small generated .gz IDX files from 127.0.0.1; yields (base_url, served_dir, hashes)."""
    served = tmp_path / "served"
    served.mkdir()
    hashes = {}
    for fname, array in small_dataset().items():
        path = served / fname
        path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))
        hashes[fname] = sha256(path)
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, hashes
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here any more: connections are refused at once
    return f"http://127.0.0.1:{port}/"


def test_fetch_files_downloads_and_verifies(server, tmp_path, monkeypatch):
    url, served, hashes = server
    cache = tmp_path / "cache" / "fashion"
    paths = data.fetch_files("Fashion-MNIST", hashes, (url,), cache)
    assert set(paths) == set(hashes)
    for fname, path in paths.items():
        assert Path(path) == cache / fname
        assert sha256(Path(path)) == hashes[fname]
    assert sorted(p.name for p in cache.iterdir()) == sorted(hashes)
    # The public loader on top of fetch_files: the same server stands in for MNIST's.
    monkeypatch.setattr(data, "MNIST_URLS", (url,))
    monkeypatch.setattr(data, "MNIST_FILES", hashes)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "data"))
    images, labels = data.load_mnist("train")
    expected = small_dataset()
    np.testing.assert_array_equal(images, expected["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(labels, expected["train-labels-idx1-ubyte.gz"])
    assert labels.dtype == np.int64


def test_fetch_files_uses_a_good_cache_without_network(server, tmp_path, monkeypatch):
    url, served, hashes = server
    cache = tmp_path / "cache"
    data.fetch_files("MNIST", hashes, (url,), cache)
    monkeypatch.setenv("DLBOOK_OFFLINE", "1")
    for f in served.iterdir():
        f.unlink()
    paths = data.fetch_files("MNIST", hashes, (url,), cache)
    assert all(sha256(p) == hashes[name] for name, p in paths.items())


def test_fetch_files_replaces_a_corrupt_cached_file(server, tmp_path):
    url, served, hashes = server
    cache = tmp_path / "cache"
    cache.mkdir()
    fname = "train-labels-idx1-ubyte.gz"
    (cache / fname).write_bytes(b"corrupt, half-downloaded file")
    paths = data.fetch_files("MNIST", {fname: hashes[fname]}, (url,), cache)
    assert sha256(paths[fname]) == hashes[fname]
    assert (cache / fname).read_bytes() == (served / fname).read_bytes()


def test_fetch_files_tries_the_next_mirror(server, tmp_path, closed_port_url):
    url, served, hashes = server
    paths = data.fetch_files("MNIST", hashes, (closed_port_url, url), tmp_path / "cache")
    assert all(sha256(p) == hashes[name] for name, p in paths.items())


def test_fetch_files_wrong_hash_raises_and_leaves_nothing(server, tmp_path):
    url, served, hashes = server
    fname = "t10k-labels-idx1-ubyte.gz"
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError) as info:
        data.fetch_files("MNIST", {fname: "0" * 64}, (url,), cache)
    msg = str(info.value)
    assert "MNIST is not available" in msg and "To get it" in msg and fname in msg
    assert list(cache.iterdir()) == []


def test_fetch_files_unreachable_server(tmp_path, no_proxy, closed_port_url):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError) as info:
        data.fetch_files(
            "Fashion-MNIST", {"train-labels-idx1-ubyte.gz": "0" * 64}, (closed_port_url,), cache
        )
    msg = str(info.value)
    assert "could not be downloaded" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(cache) in msg and "DLBOOK_DATA" in msg
    assert list(cache.iterdir()) == []


def test_fetch_files_offline_raises_without_network(server, tmp_path, monkeypatch):
    url, served, hashes = server
    monkeypatch.setenv("DLBOOK_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("pooch.retrieve must not be called offline")

    import pooch

    monkeypatch.setattr(pooch, "retrieve", no_network)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError, match="DLBOOK_OFFLINE is set") as info:
        data.fetch_files("MNIST", hashes, (url,), cache)
    assert "copy the four" in str(info.value)
    assert list(cache.iterdir()) == []


def test_offline_zero_means_online(server, tmp_path, monkeypatch):
    url, served, hashes = server
    monkeypatch.setenv("DLBOOK_OFFLINE", "0")
    paths = data.fetch_files("MNIST", hashes, (url,), tmp_path / "cache")
    assert len(paths) == 4


# ----------------------------------------------------------------------------- loaders


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DLBOOK_DATA", str(tmp_path / "d"))
    assert data.cache_dir() == tmp_path / "d"
    monkeypatch.delenv("DLBOOK_DATA")
    assert data.cache_dir() == Path.home() / ".cache" / "dlbook"


def test_load_mnist_offline_with_empty_cache_raises(monkeypatch, tmp_path):
    import pooch

    monkeypatch.setenv("DLBOOK_OFFLINE", "1")
    monkeypatch.setenv("DLBOOK_DATA", str(tmp_path))
    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: pytest.fail("network used"))
    with pytest.raises(DatasetNotFoundError) as info:
        data.load_mnist("test")
    msg = str(info.value)
    assert "MNIST" in msg and "DLBOOK_OFFLINE" in msg and str(tmp_path / "mnist") in msg
    assert isinstance(info.value, FileNotFoundError)


def test_load_mnist_from_a_prepared_cache(monkeypatch, tmp_path):
    cache = tmp_path / "mnist"
    cache.mkdir()
    arrays = small_dataset(seed=5)
    hashes = {}
    for fname in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (cache / fname).write_bytes(gzip.compress(idx_bytes(arrays[fname]), mtime=0))
        hashes[fname] = sha256(cache / fname)
    monkeypatch.setattr(data, "MNIST_FILES", {**data.MNIST_FILES, **hashes})
    monkeypatch.setenv("DLBOOK_OFFLINE", "1")
    monkeypatch.setenv("DLBOOK_DATA", str(tmp_path))
    images, labels = data.load_mnist("test")
    np.testing.assert_array_equal(images, arrays["t10k-images-idx3-ubyte.gz"])
    assert labels.dtype == np.int64 and labels.shape == (3,)


@pytest.mark.parametrize("loader", [data.load_mnist, data.load_fashion_mnist])
def test_bad_split_raises(loader):
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        loader("validation")


debian = pytest.mark.skipif(
    not all((data.DEBIAN_FASHION_MNIST / f).exists() for f in data.FASHION_MNIST_FILES),
    reason=f"Debian package dataset-fashion-mnist is not installed ({data.DEBIAN_FASHION_MNIST} "
    "missing); install it with apt-get install dataset-fashion-mnist",
)


@debian
@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_load_fashion_mnist_from_debian(monkeypatch, tmp_path, split, n):
    import pooch

    monkeypatch.setenv("DLBOOK_DATA", str(tmp_path))
    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: pytest.fail("network used"))
    images, labels = data.load_fashion_mnist(split)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(10))
    assert np.all(np.bincount(labels) == n // 10)  # Fashion-MNIST is exactly balanced
    assert images.max() == 255 and images.min() == 0
    assert list(tmp_path.iterdir()) == []  # nothing was cached or downloaded
    assert len(data.FASHION_MNIST_CLASSES) == 10


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10's binary format, written the way the authors describe it: label byte, R, G, B planes."""
    out = bytearray()
    for image, label in zip(images, labels, strict=True):
        out.append(int(label))
        for channel in image:  # (3, 32, 32): red plane, then green, then blue, each row by row
            out += bytes(channel.astype(np.uint8).ravel().tolist())
    return bytes(out)


def small_cifar(tmp_path: Path, seed: int = 0) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Write a small cifar-10-binary.tar.gz (five training batches of 2 images, a test batch of 3)."""
    import io
    import tarfile

    rng = np.random.default_rng(seed)
    batches = {name: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
               for name, n in [*((f"data_batch_{i}.bin", 2) for i in range(1, 6)), ("test_batch.bin", 3)]}
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, (images, labels) in batches.items():
            payload = cifar_records(images, labels)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive, batches


def test_read_cifar_binary_layout():
    image = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    image[0, 0, 0, 1] = 200  # red, row 0, column 1
    image[0, 2, 31, 0] = 7  # blue, last row, first column
    images, labels = data.read_cifar_binary(cifar_records(image, np.array([9])))
    assert images.dtype == np.uint8 and images.shape == (1, 3, 32, 32)
    assert labels.dtype == np.int64 and labels.tolist() == [9]
    np.testing.assert_array_equal(images, image)
    raw = cifar_records(image, np.array([9]))
    assert raw[0] == 9 and raw[1 + 1] == 200 and raw[1 + 2 * 1024 + 31 * 32] == 7


@pytest.mark.parametrize(("payload", "match"), [(b"", "not in CIFAR-10's binary format"),
                                                (b"\x01" * 3072, "not in CIFAR-10's binary format"),
                                                (b"\x0a" + b"\x00" * 3072, "label 10")])
def test_read_cifar_binary_rejects_bad_data(payload, match):
    with pytest.raises(ValueError, match=match):
        data.read_cifar_binary(payload)


def test_load_cifar10_from_a_prepared_cache(monkeypatch, tmp_path):
    import pooch

    cache = tmp_path / "cifar-10"
    cache.mkdir()
    archive, batches = small_cifar(cache)
    monkeypatch.setattr(data, "CIFAR10_FILES", {archive.name: sha256(archive)})
    monkeypatch.setenv("DLBOOK_DATA", str(tmp_path))
    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: pytest.fail("network used"))
    assert data.cifar10_available()
    images, labels = data.load_cifar10("train")
    train = [batches[f"data_batch_{i}.bin"] for i in range(1, 6)]
    np.testing.assert_array_equal(images, np.concatenate([b[0] for b in train]))  # the five batches in order
    np.testing.assert_array_equal(labels, np.concatenate([b[1] for b in train]))
    assert images.shape == (10, 3, 32, 32) and images.dtype == np.uint8 and labels.dtype == np.int64
    images, labels = data.load_cifar10("test")
    np.testing.assert_array_equal(images, batches["test_batch.bin"][0])
    assert labels.tolist() == batches["test_batch.bin"][1].tolist()
    assert len(data.CIFAR10_CLASSES) == 10


def test_load_cifar10_downloads_and_verifies(no_proxy, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    archive, batches = small_cifar(served, seed=1)
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(data, "CIFAR10_URLS", (f"http://127.0.0.1:{httpd.server_address[1]}/",))
        monkeypatch.setattr(data, "CIFAR10_FILES", {archive.name: sha256(archive)})
        monkeypatch.setenv("DLBOOK_DATA", str(tmp_path / "data"))
        assert not data.cifar10_available()
        images, labels = data.load_cifar10("test")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    np.testing.assert_array_equal(images, batches["test_batch.bin"][0])
    assert (tmp_path / "data" / "cifar-10" / archive.name).read_bytes() == archive.read_bytes()
    assert data.cifar10_available()


def test_load_cifar10_rejects_a_corrupt_archive_offline(monkeypatch, tmp_path):
    cache = tmp_path / "cifar-10"
    cache.mkdir()
    (cache / "cifar-10-binary.tar.gz").write_bytes(b"half a download")
    monkeypatch.setenv("DLBOOK_DATA", str(tmp_path))
    monkeypatch.setenv("DLBOOK_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError) as info:
        data.load_cifar10("train")  # the real hash: the corrupt file is never read as data
    msg = str(info.value)
    assert "CIFAR-10 is not available" in msg and "cifar-10-binary.tar.gz" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and str(cache) in msg


def test_load_cifar10_rejects_an_archive_without_the_batches(monkeypatch, tmp_path):
    import io
    import tarfile

    cache = tmp_path / "cifar-10"
    cache.mkdir()
    archive = cache / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # the python version's layout, not the binary one
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    monkeypatch.setattr(data, "CIFAR10_FILES", {archive.name: sha256(archive)})
    monkeypatch.setenv("DLBOOK_DATA", str(tmp_path))
    monkeypatch.setenv("DLBOOK_OFFLINE", "1")
    with pytest.raises(ValueError, match="has no file cifar-10-batches-bin/test_batch.bin"):
        data.load_cifar10("test")


def test_load_cifar10_bad_split():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.load_cifar10("validation")

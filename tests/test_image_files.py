"""Local image archives are read by content (magic number, shape, count), never by checksum, and never
downloaded over: archives recompressed by another source work, and any download attempt fails the test."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile

import pytest
import torch

from mmrobust.image import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule
from mmrobust.image.files import InvalidDataFile, read_idx, write_idx


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to reach the network (torchvision's download helpers or urllib) fails the test."""
    import urllib.request

    import torchvision.datasets.mnist as tv_mnist
    import torchvision.datasets.utils as tv_utils

    def refuse(*args, **kwargs):
        pytest.fail(f"a download was attempted: {args!r}")

    for module, name in ((tv_utils, "download_url"), (tv_utils, "download_and_extract_archive"),
                         (tv_mnist, "download_and_extract_archive"), (urllib.request, "urlopen"),
                         (urllib.request, "urlretrieve")):
        monkeypatch.setattr(module, name, refuse)


def _idx_split(n: int, offset: int):
    """Images whose pixels encode their index (image i is constant (i + offset) % 251), labels i % 10."""
    i = torch.arange(n)
    images = ((i + offset) % 251).to(torch.uint8)[:, None, None].expand(n, 28, 28)
    return images, (i % 10).to(torch.uint8)


def make_idx_archives(folder, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if compress else ""
    for prefix, n, off in (("train", 60000, 0), ("t10k", 10000, 7)):
        images, labels = _idx_split(n, off)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)


@pytest.mark.parametrize("module, compress", [(MNISTDataModule, True), (FashionMNISTDataModule, False)])
def test_idx_archives_from_another_source_are_used_without_download(tmp_path, no_download, module, compress):
    source = tmp_path / "elsewhere"
    make_idx_archives(source, compress)
    for download in (True, False):  # download=True must not download over local files either
        dm = module(tmp_path / f"root{download}", copy_raw_from=source, download=download, val_size=1000)
        dm.prepare_data()
        dm.setup()
        assert len(dm.train_set) == 59000 and len(dm.val_set) == 1000 and len(dm.test_set) == 10000
        x, y = dm.test_set[123]
        assert x.shape == (1, 28, 28) and torch.allclose(x, torch.full_like(x, ((123 + 7) % 251) / 255))
        assert int(y) == 3
    fm = module.from_directory(source, tmp_path / "fd")
    fm.setup()
    assert fm.download is False and len(fm.test_set) == 10000


def test_recompressed_shared_mnist(tmp_path, shared_data, no_download):
    """The real MNIST archives recompressed (other checksum than torchvision's) load identically."""
    source = tmp_path / "recompressed"
    source.mkdir()
    for f in sorted((shared_data / "MNIST" / "raw").glob("*.gz")):
        data = gzip.decompress(f.read_bytes())
        (source / f.name).write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
        assert hashlib.md5((source / f.name).read_bytes()).digest() != hashlib.md5(f.read_bytes()).digest()
    dm = MNISTDataModule.from_directory(source, tmp_path / "root")
    dm.prepare_data()
    dm.setup()
    ref = read_idx(shared_data / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", (10000, 28, 28))
    assert torch.equal(dm.test_set.images[:, 0], ref)
    assert dm.test_set.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test labels


@pytest.mark.parametrize("corrupt, match", [
    (lambda p: p.__setitem__(3, 3), "expected a 1-dimensional IDX file"),
    (lambda p: p.__setitem__(2, 0x0D), "type byte must be 0x08"),
    (lambda p: p.__setitem__(0, 1), "two zero bytes"),
    (lambda p: p.__setitem__(7, 0x0F), r"expected shape \(12,\)"),
    (lambda p: p.extend(b"\0"), "promises 12 bytes of data, the file holds 13"),
    (lambda p: p.__setitem__(slice(0, None), b"\x1f\x8bnot gzip"), "not a readable gzip archive")])
def test_invalid_idx_content_is_a_clear_error(tmp_path, corrupt, match):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    write_idx(path, torch.arange(12, dtype=torch.uint8), compress=False)
    assert torch.equal(read_idx(path, (12,)), torch.arange(12, dtype=torch.uint8))
    payload = bytearray(path.read_bytes())
    corrupt(payload)
    path.write_bytes(bytes(payload))
    with pytest.raises(InvalidDataFile, match=match) as info:
        read_idx(path, (12,))
    assert str(path) in str(info.value)


def test_wrong_local_files_are_reported_not_downloaded_over(tmp_path, no_download):
    source = tmp_path / "bad"
    make_idx_archives(source)
    labels = torch.arange(10000) % 11  # a label 10 in a 10-class dataset
    write_idx(source / "t10k-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    dm = MNISTDataModule(tmp_path / "root", copy_raw_from=source)  # download=True by default: still none
    dm.prepare_data()
    with pytest.raises(InvalidDataFile, match=r"t10k-labels-idx1-ubyte.gz: labels must lie in \[0, 9\], found 10"):
        dm.setup()


def _cifar_tar(path, corrupt_test=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            data = torch.full((10000, 3072), k, dtype=torch.uint8).numpy()
            labels = [(j + k) % 10 for j in range(10000)]
            if corrupt_test and name == "test_batch":
                data = data[:, :100]
            raw = pickle.dumps({"data": data, "labels": labels})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


@pytest.mark.slow
def test_cifar_archive_from_another_source(tmp_path, no_download):
    source = tmp_path / "elsewhere"
    _cifar_tar(source / "cifar-10-python.tar.gz")
    dm = CIFAR10DataModule(tmp_path / "root", copy_raw_from=source, augment=False)  # download=True by default
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 45000 and len(dm.test_set) == 10000
    x, y = dm.test_set[3]
    assert x.shape == (3, 32, 32) and torch.allclose(x, torch.full_like(x, 5 / 255)) and int(y) == (3 + 5) % 10
    assert not (tmp_path / "root" / "cifar-10-batches-py").exists()  # read from the archive, not extracted
    _cifar_tar(source / "bad" / "cifar-10-python.tar.gz", corrupt_test=True)
    bad = CIFAR10DataModule(tmp_path / "root2", copy_raw_from=source / "bad")
    bad.prepare_data()
    with pytest.raises(InvalidDataFile, match=r"test_batch: expected 'data' uint8 \(10000, 3072\)"):
        bad.setup()

"""Image datamodules (digits offline, MNIST from ../shared/data) and reference models."""

from __future__ import annotations

import pytest
import torch

from mmrobust.image import (CIFAR10DataModule, DigitsDataModule, InputNormalization, MNISTDataModule,
                            PreActResNet18, SmallCNN, StridedCNN, WideResNet)


def test_digits_datamodule_shapes_ranges_and_seeded_split():
    dm = DigitsDataModule(batch_size=32, seed=0)
    dm.setup("fit")
    sizes = len(dm.train_set), len(dm.val_set), len(dm.test_set)
    assert sum(sizes) == 1797 and sizes[2] == round(0.2 * 1797) and sizes[1] == round(0.1 * 1797)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    xs = torch.cat([b[0] for b in dm.test_dataloader()])
    assert xs.min() >= 0 and xs.max() <= 1 and xs.max() == 1  # full [0, 1] range, no normalisation
    # same seed, same split; other seed, other split; splits are disjoint
    again = DigitsDataModule(seed=0)
    again.setup()
    other = DigitsDataModule(seed=1)
    other.setup()
    assert torch.equal(dm.test_set.tensors[0], again.test_set.tensors[0])
    assert not torch.equal(dm.test_set.tensors[0], other.test_set.tensors[0])
    train_rows = {tuple(r.flatten().tolist()) for r in dm.train_set.tensors[0]}
    test_rows = [tuple(r.flatten().tolist()) for r in dm.test_set.tensors[0]]
    # digits has a few duplicate images; almost no test image may be in the training split
    assert sum(r in train_rows for r in test_rows) < 10


def test_digits_limits_and_seeded_shuffling():
    dm = DigitsDataModule(batch_size=16, limit_train=50, limit_test=20)
    dm.setup()
    assert len(dm.train_set) == 50 and len(dm.test_set) == 20
    first = [b[1] for b in dm.train_dataloader()]
    second = [b[1] for b in dm.train_dataloader()]
    assert sum(len(b) for b in first) == 50
    assert torch.equal(torch.cat(first), torch.cat(second))  # a fresh loader replays the seeded order


@pytest.mark.parametrize("kwargs, match", [({"batch_size": 0}, "batch_size"), ({"val_fraction": 1.0}, "val_fraction"),
                                           ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
                                           ({"limit_train": 0}, "limit_train")])
def test_digits_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_torchvision_modules_fail_clearly_offline_without_files(tmp_path):
    dm = MNISTDataModule(tmp_path, download=False)
    with pytest.raises(RuntimeError, match="copy_raw_from"):
        dm.setup()
    with pytest.raises(FileNotFoundError, match="copy_raw_from"):
        CIFAR10DataModule(tmp_path, copy_raw_from=tmp_path / "missing")


def test_mnist_datamodule_from_shared_copy(tmp_path, shared_data):
    dm = MNISTDataModule.from_directory(shared_data / "MNIST", tmp_path, batch_size=64, limit_train=256,
                                        limit_test=128)
    dm.prepare_data()  # download=True must not touch the network when the archives are there
    dm.setup("fit")
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()
    assert len(dm.train_set) == 256 and len(dm.val_set) == 5000 and len(dm.test_set) == 128
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and 0 <= x.min() and x.max() <= 1 and x.max() > 0.99
    assert y.dtype == torch.long and int(y.max()) <= 9
    xt, _ = next(iter(dm.test_dataloader()))
    assert xt.shape == (64, 1, 28, 28)


@pytest.mark.parametrize("make, shape", [
    (lambda: PreActResNet18(in_channels=3, num_classes=10, width=8), (2, 3, 32, 32)),
    (lambda: PreActResNet18(in_channels=1, num_classes=7, width=4), (2, 1, 28, 28)),
    (lambda: WideResNet(depth=10, widen_factor=1), (2, 3, 32, 32)),
    (lambda: WideResNet(depth=16, widen_factor=2, in_channels=1, num_classes=5, dropout=0.3), (2, 1, 28, 28)),
    (lambda: SmallCNN(in_channels=1, image_size=8, width=0.25, hidden=32), (2, 1, 8, 8)),
    (lambda: StridedCNN(), (2, 1, 28, 28)),
    (lambda: StridedCNN(in_channels=3, image_size=32, width=0.5, hidden=16), (2, 3, 32, 32)),
])
def test_reference_models_forward_and_backward(make, shape):
    torch.manual_seed(0)
    model = make()
    x = torch.rand(shape)
    out = model(x)
    classes = model.linear.out_features if hasattr(model, "linear") else 10
    assert out.shape == (shape[0], classes) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_reference_architectures_match_the_papers():
    full = PreActResNet18()
    # 11.17M parameters for CIFAR-10: the common PreAct ResNet-18 (11,171,146) plus the final BN (2 x 512)
    # that pre-activation networks and Rice et al.'s version put before the pooling
    assert sum(p.numel() for p in full.parameters()) == 11_171_146 + 1024
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in full.modules()) == 17
    wrn = WideResNet(depth=28, widen_factor=10)
    # WRN-28-10: 36.5M parameters (Zagoruyko & Komodakis 2016, Table 4)
    assert abs(sum(p.numel() for p in wrn.parameters()) / 1e6 - 36.5) < 0.1
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in wrn.modules()) == 25
    strided = StridedCNN()
    # Wong & Kolter 2018's small MNIST model: conv 16@4x4/2, conv 32@4x4/2, 1568 -> 100 -> 10
    assert [m.out_channels for m in strided.modules() if isinstance(m, torch.nn.Conv2d)] == [16, 32]
    assert sum(p.numel() for p in strided.parameters()) == (16 * 16 + 16) + (32 * 16 * 16 + 32) + (1568 * 100 + 100) + 1010
    with pytest.raises(ValueError, match="image_size must be a multiple of 4"):
        StridedCNN(image_size=30)


def test_input_normalization_inside_the_model():
    mean, std = CIFAR10DataModule.mean, CIFAR10DataModule.std
    model = PreActResNet18(width=4, mean=mean, std=std)
    x = torch.rand(2, 3, 32, 32)
    expected = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(model.normalize(x), expected)
    assert "normalize.mean" in model.state_dict()  # buffers travel with the weights and the device
    plain = PreActResNet18(width=4)
    assert isinstance(plain.normalize, torch.nn.Identity)
    with pytest.raises(ValueError, match="mean and std"):
        PreActResNet18(mean=mean)
    with pytest.raises(ValueError, match="one value per input channel"):
        InputNormalization([0.5, 0.5], [0.2, 0.2], channels=3)
    with pytest.raises(ValueError, match="std"):
        InputNormalization([0.5], [0.0], channels=1)


@pytest.mark.parametrize("kwargs, match", [({"depth": 12}, "depth"), ({"widen_factor": 0}, "widen_factor"),
                                           ({"dropout": 1.0}, "dropout"), ({"num_classes": 1}, "num_classes")])
def test_wide_resnet_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WideResNet(**kwargs)

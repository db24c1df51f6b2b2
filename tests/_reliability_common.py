"""Shared pieces of the reliability tests: a tiny digits module, a resumable data order, a crash switch.

Exact mid-epoch resume in Lightning needs three things (besides the callbacks' own ``state_dict``):
the loops' progress (saved by Lightning), the optimizer state (saved by Lightning), and the *data order*:
a plain ``DataLoader`` restarts its epoch from the first batch on resume (Lightning warns "resuming from
a checkpoint that ended before the epoch ended ... dataloader is not resumable"). :class:`EpochShuffle`
draws each epoch's order from ``seed + epoch`` (like ``DistributedSampler.set_epoch``, which Lightning
calls), and :class:`SkipCompletedBatches` fast-forwards it past the batches the restored loop has
already completed, before the first batch of the resumed run is drawn.
"""

from __future__ import annotations

import warnings
from typing import Iterator, List, Optional

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 16, 10))


class LitClassifier(pl.LightningModule):
    """The smallest Lightning classifier: ``model``, cross-entropy on ``(x, y, ...)`` batches and
    ``optimizer(parameters, lr, **optimizer_kwargs)`` (Adam by default)."""

    def __init__(self, model: nn.Module, lr: float = 3e-3, optimizer=torch.optim.Adam, **optimizer_kwargs):
        super().__init__()
        self.model = model
        self.lr = lr
        self.optimizer = optimizer
        self.optimizer_kwargs = optimizer_kwargs

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return self.optimizer(self.parameters(), self.lr, **self.optimizer_kwargs)


class DigitsModule(pl.LightningModule):
    """A user's plain classifier (lists from the default collate, SGD with momentum)."""

    def __init__(self, lr: float = 0.05):
        super().__init__()
        torch.manual_seed(0)
        self.net = tiny_cnn()
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.log("val/loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class EpochShuffle(Sampler[int]):
    """A permutation drawn from ``seed + epoch``: the same order in every run, skippable from the front."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        skip, self.skip = self.skip, 0
        return iter(order[skip:])

    def __len__(self) -> int:
        return self.n


def digits_loader(digits, n: int = 96, batch_size: int = 16, seed: int = 0) -> DataLoader:
    x, y = digits[0][:n], digits[1][:n]
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, sampler=EpochShuffle(n, seed))


class SkipCompletedBatches(pl.Callback):
    """Fast-forwards an :class:`EpochShuffle` loader to where the restored fit loop stopped."""

    def on_train_start(self, trainer, pl_module):
        # a checkpoint written by ModelCheckpoint in on_train_batch_end has counted the batch as processed
        # but not yet as completed; Lightning completes it when the loop restarts
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done and done < trainer.num_training_batches:
            loader = trainer.train_dataloader
            loader.sampler.skip = done * loader.batch_size


class Crash(RuntimeError):
    """The simulated fault (a pre-empted job, a node failure)."""


class CrashAt(pl.Callback):
    """Raises :class:`Crash` when the ``step``-th training batch starts (a job killed mid-epoch)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"simulated crash at step {self.step}")


def trainer(tmp_path=None, callbacks: Optional[List[pl.Callback]] = None, **kw) -> pl.Trainer:
    kw.setdefault("max_epochs", 2)
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                      deterministic=True, default_root_dir=tmp_path, callbacks=callbacks or [],
                      num_sanity_val_steps=0, **kw)


def weights(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}

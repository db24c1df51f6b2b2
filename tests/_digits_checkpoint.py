"""One trained-checkpoint fixture body for the CLI tests: a SmallCNN trained briefly on 8x8 digits, as state_dict."""

from pathlib import Path
from typing import Dict, Tuple

import torch


def train_digits_cnn(directory: Path, model_args: Dict, *, lr: float, epochs: int = 3,
                     **data_args) -> Tuple[torch.nn.Module, Path]:
    """``(model in eval mode, path of its state_dict)`` after ``epochs`` of Adam on DigitsDataModule(**data_args)."""
    from mmrobust.image import DigitsDataModule, SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(**model_args)
    data = DigitsDataModule(batch_size=64, seed=0, **data_args)
    data.setup("fit")
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        for x, y in data.train_dataloader():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    path = directory / "cnn.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), path

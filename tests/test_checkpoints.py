import pickle

import pytest
import torch
from torch import nn

from mmrobust.checkpoints import UnsafeCheckpointError, load_checkpoint, load_weights


class _Payload:
    """Unpickling this runs code: a tampered checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "x": _Payload(marker)}, f)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_lightning_style_checkpoint_with_prefix_loads(tmp_path):
    net = nn.Linear(3, 2)
    path = tmp_path / "run.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    other = nn.Linear(3, 2)
    load_weights(other, path)
    assert torch.equal(other.weight, net.weight)


def test_missing_file_and_wrong_content(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, path)
    with pytest.raises(KeyError, match="does not contain the model's weights"):
        load_weights(nn.Linear(3, 2), path)

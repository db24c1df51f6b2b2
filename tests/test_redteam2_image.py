"""Red-team probe: a dict batch whose image comes with another float tensor (a mask, boxes, features).

Any dict with two float tensors is read as a multimodal batch; the error then has to say how to attack the image
alone, which is what such a user wants (the hint used to offer only a joint threat over both tensors)."""

import pytest
import torch
from torch import nn

from mmrobust import PGD, LinfBall
from mmrobust.adapters import TensorAdapter


def test_image_dict_with_an_extra_float_entry_names_the_single_input_adapter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batch = {"image": torch.rand(4, 3, 2, 2), "label": torch.tensor([0, 1, 2, 0]), "aux": torch.rand(4, 2, 2)}
    threat = LinfBall(0.1, lower=0, upper=1)
    with pytest.raises(ValueError, match=r"TensorAdapter\(input_key"):
        PGD(threat, steps=2, seed=0)(model, batch)
    result = PGD(threat, steps=2, seed=0, adapter=TensorAdapter(input_key="image", target_key="label"))(model, batch)
    assert torch.equal(result.batch["aux"], batch["aux"])
    assert bool(((result.batch["image"] - batch["image"]).abs() <= 0.1 + 1e-6).all())

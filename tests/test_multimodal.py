"""Dict batches with an image and a waveform: joint and per-modality attacks."""

import pytest
import torch
from torch import nn

from mmrobust import PGD, LinfBall
from mmrobust.adapters import MultimodalAdapter, infer_adapter
from mmrobust.threats import Joint, SNRBall


class LateFusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.audio = nn.Sequential(nn.Conv1d(1, 8, 15, stride=4), nn.ReLU(), nn.AdaptiveAvgPool1d(8), nn.Flatten(),
                                   nn.Linear(64, 10))

    def forward(self, image, audio):
        return self.image(image) + self.audio(audio.unsqueeze(1))


def _tones(y, n=400, generator=None):
    t = torch.arange(n) / 4000.0
    freq = 200.0 + 120.0 * y[:, None]
    phase = torch.rand(len(y), 1, generator=generator) * 6.28
    return 0.5 * torch.sin(2 * torch.pi * freq * t + phase) + 0.05 * torch.randn(len(y), n, generator=generator)


@pytest.fixture(scope="module")
def fused(digits):
    x, y, xt, yt = digits
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = LateFusion()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    audio = _tones(y, generator=g).clamp(-1, 1)
    for _ in range(4):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64], audio[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    test = {"image": xt[:120], "audio": _tones(yt[:120], generator=g).clamp(-1, 1), "y": yt[:120]}
    return model, test


def test_multimodal_dicts_are_recognised(fused):
    _, batch = fused
    assert isinstance(infer_adapter(batch), MultimodalAdapter)


def test_joint_attack_respects_each_budget_and_beats_single_modalities(fused):
    model, batch = fused
    joint = Joint({"image": LinfBall(0.2, lower=0, upper=1), "audio": SNRBall(10)})
    res = {name: PGD(threat, steps=20, seed=0)(model, batch)
           for name, threat in {"joint": joint, "image": joint.only("image"), "audio": joint.only("audio")}.items()}
    clean = res["joint"].clean_correct.float().mean()
    assert clean > 0.85
    r = res["joint"]
    assert float(r.size["image"].max()) <= 0.2 + 1e-6
    snr = 20 * torch.log10(batch["audio"].norm(dim=1) / (r.inputs["audio"] - batch["audio"]).norm(dim=1))
    assert float(snr.min()) >= 10 - 1e-3
    # single-modality attacks leave the other modality untouched
    assert torch.equal(res["image"].inputs["audio"], batch["audio"])
    assert torch.equal(res["audio"].inputs["image"], batch["image"])
    joint_acc = r.robust.float().mean()
    assert joint_acc <= res["image"].robust.float().mean() + 1e-6
    assert joint_acc <= res["audio"].robust.float().mean() + 1e-6
    assert joint_acc < clean - 0.5
    # APGD with early stopping shrinks multimodal batches consistently and keeps both budgets
    from mmrobust.attacks import APGD

    a = APGD(joint, steps=10, seed=0, early_stop=True)(model, batch)
    assert float(a.size["image"].max()) <= 0.2 + 1e-6
    snr = 20 * torch.log10(batch["audio"].norm(dim=1) / (a.inputs["audio"] - batch["audio"]).norm(dim=1))
    assert float(snr.min()) >= 10 - 1e-3
    assert a.robust.float().mean() < clean - 0.5


def test_joint_threat_validates_names(fused):
    model, batch = fused
    with pytest.raises(KeyError, match="does not have"):
        PGD(Joint({"video": LinfBall(0.1)}), steps=1)(model, batch)
    with pytest.raises(TypeError, match="must be a ThreatModel"):
        Joint({"image": 0.1})
    with pytest.raises(ValueError, match="several attackable inputs"):
        PGD(LinfBall(0.1), steps=1)(model, batch)

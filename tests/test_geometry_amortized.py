"""Amortised (AdvGAN-style) attack: one generator pass, inside the budget, fools the model, trains online."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrobust.attacks import AmortizedAttack, ConvPerturbationGenerator, MLPPerturbationGenerator
from mmrobust.threats import L2Ball, LinfBall


def _loader(x, y, batch_size=64):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def test_amortized_attack_fools_digits_cnn_within_budget(digits, digits_cnn):
    x, y, xt, yt = digits
    torch.manual_seed(0)
    threat = L2Ball(1.5, lower=0, upper=1)
    attack = AmortizedAttack(threat, MLPPerturbationGenerator((1, 8, 8), 256), lr=3e-3, seed=0)
    before = attack(digits_cnn, (xt[:200], yt[:200]))
    history = attack.fit(digits_cnn, _loader(x[:640], y[:640]), epochs=3)
    assert history[-1] > history[0]
    xt0 = xt.clone()
    result = attack(digits_cnn, (xt[:200], yt[:200]))
    assert torch.equal(xt, xt0)
    assert bool(threat.contains(result.inputs["image"] - xt[:200], xt[:200]).all())
    clean = result.clean_correct.float().mean().item()
    assert clean > 0.9
    assert result.robust.float().mean().item() < 0.4 * clean
    assert result.robust.float().mean().item() < before.robust.float().mean().item() - 0.4
    assert all(p.requires_grad for p in digits_cnn.parameters()) and not digits_cnn.training


def test_amortized_linf_generator_output_stays_in_box_and_ball(digits, digits_cnn):
    _, _, xt, yt = digits
    threat = LinfBall(0.2, lower=0, upper=1)
    gen = ConvPerturbationGenerator(1, width=8, blocks=1)
    with torch.no_grad():
        gen.net[-1].bias.fill_(5.0)  # saturated outputs must still respect box and ball
    result = AmortizedAttack(threat, gen)(digits_cnn, (xt[:50], yt[:50]))
    assert bool(threat.contains(result.inputs["image"] - xt[:50], xt[:50]).all())
    assert result.size["image"].max() > 0.19


def test_amortized_attack_online_generate_updates_and_checkpoints(digits, digits_cnn):
    x, y, _, _ = digits
    gen = MLPPerturbationGenerator((1, 8, 8), hidden=32)
    attack = AmortizedAttack(LinfBall(0.1, lower=0, upper=1), gen, online=True, online_steps=2)
    w0 = [p.clone() for p in gen.parameters()]
    adv = attack.generate(digits_cnn, [x[:16], y[:16]])
    assert attack.updates == 2 and any(not torch.equal(a, p) for a, p in zip(w0, gen.parameters()))
    assert (adv[0] - x[:16]).abs().max() <= 0.1 + 1e-6
    state = attack.state_dict()
    other = AmortizedAttack(LinfBall(0.1, lower=0, upper=1), MLPPerturbationGenerator((1, 8, 8), hidden=32))
    other.load_state_dict(state)
    assert other.updates == 2
    assert torch.equal(other(digits_cnn, (x[:8], y[:8])).inputs["image"], attack(digits_cnn, (x[:8], y[:8])).inputs["image"])


def test_amortized_attack_in_adversarial_training_callback(digits):
    import pytorch_lightning as pl
    from mmrobust.callbacks import AdversarialTraining

    x, y, _, _ = digits

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
            self.seen = []

        def forward(self, inp):
            return self.model(inp)

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[0].detach().clone())
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-3)

    attack = AmortizedAttack(LinfBall(0.1, lower=0, upper=1), MLPPerturbationGenerator((1, 8, 8), 32), online=True)
    module = Module()
    trainer = pl.Trainer(max_steps=3, callbacks=[AdversarialTraining(attack)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:96], y[:96]), batch_size=32))
    assert attack.updates == 3
    for i, seen in enumerate(module.seen):
        diff = (seen - x[32 * i:32 * (i + 1)]).abs().amax()
        assert 0 < diff <= 0.1 + 1e-6


def test_amortized_attack_rejects_bad_arguments(digits_cnn):
    with pytest.raises(TypeError, match="generator must be"):
        AmortizedAttack(LinfBall(0.1), lambda x: x)
    with pytest.raises(ValueError, match="lr must be"):
        AmortizedAttack(LinfBall(0.1), MLPPerturbationGenerator((4,)), lr=0)
    attack = AmortizedAttack(LinfBall(0.1), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="perturbation of the input's shape"):
        attack(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (torch.rand(2, 4), torch.zeros(2, dtype=torch.long)))

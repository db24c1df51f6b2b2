"""The budget contract (issue 14): a threat model scales its own budget, and warm-ups follow it.

``ThreatModel.scaled(f)`` must give ``f`` times the radius (counts: the floor) for every threat model the
library exports; nobody multiplies an ``eps`` that may hold a dB level, a count or a fraction.
"""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import mmrobust.threats as threats_module
from mmrobust.attacks import PGD
from mmrobust.callbacks import AdversarialTraining
from mmrobust.callbacks.adversarial import scaled_threat
from mmrobust.threats import PerUnitRadius
from mmrobust.threats import (BinaryFeatureFlips, EdgeFlips, FeatureBall, Joint, L1Ball, L2Ball, LatentBall,
                              LinfBall, PeakDBBall, PsychoacousticBall, SNRBall, ThreatModel, WeightBall)

warnings.filterwarnings("ignore", ".*does not have many workers.*")
FACTORS = (0.0, 0.1, 0.25, 0.5, 1.0, 1.7)


def _x(seed=0, shape=(3, 2, 5)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 1.6 - 0.8)


def _latent():
    return LatentBall(0.7, lambda x: x.flatten(1)[:, :4], lambda z: z, norm="l2")


#: every exported threat model -> a builder; test_every_exported_threat_model_is_covered keeps it complete
TENSOR_THREATS = {
    "LinfBall": lambda: LinfBall(0.03, lower=-1, upper=1),
    "L2Ball": lambda: L2Ball(0.5),
    "L1Ball": lambda: L1Ball(2.0, lower=-1, upper=1),
    "SNRBall": lambda: SNRBall(30.0),
    "PeakDBBall": lambda: PeakDBBall(-31.0),
    "PsychoacousticBall": lambda: PsychoacousticBall(0.0, sample_rate=8000, n_fft=16),
    "FeatureBall": lambda: FeatureBall(0.2, "l2"),
    "BinaryFeatureFlips": lambda: BinaryFeatureFlips(7),
    "LatentBall": _latent,
    "PerUnitRadius": lambda: PerUnitRadius(SNRBall(20.0), torch.tensor([0.1, 0.2, 0.0], dtype=torch.float64)),
}
OTHER_THREATS = {"EdgeFlips", "WeightBall", "Joint"}  # tested below with their own measures
NOT_THREAT_MODELS = {"ThreatModel", "LatentAdapter"}


def test_every_exported_threat_model_is_covered():
    exported = {name for name in threats_module.__all__ if inspect.isclass(getattr(threats_module, name))
                or name == "FeatureBall"}
    missing = exported - set(TENSOR_THREATS) - OTHER_THREATS - NOT_THREAT_MODELS
    assert not missing, f"add {sorted(missing)} to the budget-contract property tests"
    for name in exported - NOT_THREAT_MODELS - {"FeatureBall", "Joint", "WeightBall"}:
        assert issubclass(getattr(threats_module, name), ThreatModel)


@pytest.mark.parametrize("name", sorted(TENSOR_THREATS))
@pytest.mark.parametrize("f", FACTORS)
def test_scaled_radius_is_f_times_the_radius(name, f):
    threat = TENSOR_THREATS[name]()
    x = _x()
    r = threat.radius(x)
    scaled = threat.scaled(f)
    assert type(scaled) is type(threat)
    if isinstance(threat, BinaryFeatureFlips):  # a count of bit flips: the floor of f times it
        assert math.floor(scaled.eps + 1e-9) == math.floor(f * 7 + 1e-9)
    assert torch.allclose(scaled.radius(x), f * r, rtol=1e-12, atol=0)
    assert torch.equal(threat.radius(x), r)  # the original is untouched
    if f == 0:  # nothing allowed: every projection lands on 0
        v = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
        assert float(scaled.project(v, x).abs().max()) == 0.0
    if f == 1:
        assert torch.equal(scaled.radius(x), r) and repr(scaled) == repr(threat)


@pytest.mark.parametrize("f", FACTORS)
def test_decibel_levels_move_by_twenty_log10_f(f):
    snr, peak = SNRBall(30.0).scaled(f), PeakDBBall(-31.0).scaled(f)
    if f == 0:
        assert snr.snr_db == math.inf and peak.db == -math.inf
    else:
        assert snr.snr_db == pytest.approx(30.0 - 20 * math.log10(f))
        assert peak.db == pytest.approx(-31.0 + 20 * math.log10(f))


def test_warmup_factor_half_of_an_snr_budget_is_half_its_radius_not_15_db():
    # the bug: scaled_threat multiplied eps, SNRBall(30) x 0.5 became 15 dB, a radius 5.6x the full one
    x = _x()
    half = scaled_threat(SNRBall(30.0), 0.5)
    assert torch.allclose(half.radius(x), 0.5 * SNRBall(30.0).radius(x))
    assert half.snr_db == pytest.approx(36.02, abs=0.01)
    quiet = scaled_threat(PeakDBBall(-31.0), 0.5)
    assert torch.allclose(quiet.radius(x), 0.5 * PeakDBBall(-31.0).radius(x))


@pytest.mark.parametrize("f", FACTORS)
def test_edge_flips_scale_by_count_and_by_fraction(f):
    edges = torch.tensor([0, 7, 64, 5278])
    by_count, by_fraction = EdgeFlips(10), EdgeFlips(0.05)
    assert torch.equal(by_count.scaled(f).flips_allowed(edges), torch.full((4,), math.floor(f * 10 + 1e-9)))
    expected = torch.tensor([math.floor(f * 0.05 * m + 1e-9) for m in edges.tolist()])
    assert torch.equal(by_fraction.scaled(f).flips_allowed(edges), expected)
    assert by_count.scaled(f).count == 10 and by_fraction.scaled(f).fraction == 0.05  # own fields, not eps
    assert torch.equal(by_count.scaled(1.0).flips_allowed(edges), by_count.flips_allowed(edges))


def test_edge_flips_one_at_half_is_zero_flips_not_half_the_edges():
    # the bug: EdgeFlips(1) x 0.5 became EdgeFlips(0.5), "50% of the edges" (2639 flips on Cora)
    assert int(scaled_threat(EdgeFlips(1), 0.5).flips_allowed(torch.tensor([5278]))) == 0
    assert int(scaled_threat(EdgeFlips(10), 0.5).flips_allowed(torch.tensor([5278]))) == 5  # raised before


def test_budgets_that_are_not_radii_have_no_eps():
    for threat, field in ((SNRBall(30.0), "snr_db"), (PeakDBBall(-31.0), "db"), (EdgeFlips(3), "count")):
        assert not hasattr(threat, "eps")
        with pytest.raises(AttributeError, match=field):
            threat.eps  # noqa: B018
        with pytest.raises(TypeError, match="scaled"):
            threat.with_eps(0.5)


@pytest.mark.parametrize("f", FACTORS)
def test_weight_ball_and_joint_scale_every_radius(f):
    model = nn.Linear(4, 3)
    ball = WeightBall(0.01)
    for k, r in ball.scaled(f).radius(model).items():
        assert torch.allclose(r, f * ball.radius(model)[k])
    joint = Joint({"image": LinfBall(0.1, lower=0, upper=1), "audio": SNRBall(30.0)})
    scaled = joint.scaled(f)
    assert isinstance(scaled, Joint)
    x = _x().clamp(0, 1)
    for k in joint:
        assert torch.allclose(scaled[k].radius(x), f * joint[k].radius(x))


def test_no_code_outside_threats_does_arithmetic_on_eps():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "mmrobust"
    pattern = re.compile(r"\.eps\s*[-+*/]|[-+*/]\s*[\w\]\)]*\.eps\b|with_eps\(\s*[\w.]+\.eps")
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if "threats" not in p.parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders


def test_per_unit_radius_random_start_uses_the_per_unit_radius_for_db_budgets():
    # the bug: PerUnitRadius(SNRBall).random_init used with_eps(1.0) = "1 dB", a radius ~0.9 ||x||
    x = _x()
    radii = torch.tensor([0.01, 0.02, 0.0], dtype=torch.float64)
    threat = PerUnitRadius(SNRBall(30.0), radii)
    d = threat.random_init(x, torch.Generator().manual_seed(0))
    assert bool((d.flatten(1).norm(dim=1) <= radii * (1 + 1e-9)).all())
    assert float(d[2].abs().max()) == 0.0


# -- warm-ups in training: audio (dB) and graphs (edge flips) -----------------------------------------
class _Recorder(pl.LightningModule):
    def __init__(self, net, read):
        super().__init__()
        self.net, self.read, self.seen = net, read, []

    def forward(self, *args):
        return self.net(*args)

    def training_step(self, batch, batch_idx):
        inputs, y, logits = self.read(self, batch)
        self.seen.append(inputs)
        return nn.functional.cross_entropy(logits, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(epochs, callback):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[callback])


class _Fresh:
    """One batch per epoch, a fresh copy each time (the callback replaces the batch's entries in place)."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        yield self.make()

    def __len__(self):
        return 1


def test_audio_warmup_starts_at_the_smallest_snr_radius():
    torch.manual_seed(0)
    wave = torch.rand(8, 400) * 0.6 - 0.3
    y = torch.arange(8) % 2
    batches = _Fresh(lambda: {"audio": wave.clone(), "label": y})
    net = nn.Sequential(nn.Linear(400, 2))

    def read(module, batch):
        return batch["audio"].detach().clone(), batch["label"], module(batch["audio"])

    module = _Recorder(net, read)
    cb = AdversarialTraining(PGD(SNRBall(30.0), steps=3, seed=0), warmup_epochs=4)
    _trainer(5, cb).fit(module, batches)
    full = wave.norm(dim=1) * 10 ** (-30 / 20)
    for f, seen in zip((0.0, 0.25, 0.5, 0.75, 1.0), module.seen):
        ratio = (seen - wave).norm(dim=1) / full
        assert float(ratio.max()) <= f + 1e-4
        if f > 0:
            assert float(ratio.max()) >= 0.5 * f  # the attack used the budget it was given
    assert cb.attack.threat.snr_db == 30.0


def test_graph_warmup_flips_floor_f_times_the_count():
    pytest.importorskip("torch_geometric")
    from torch_geometric.data import Data

    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.attacks.prbcd import PRBCD
    from mmrobust.graph import GCN
    from mmrobust.threats.graph import undirected_pairs

    g = torch.Generator().manual_seed(0)
    n = 30
    row = torch.randint(0, n, (60,), generator=g)
    col = torch.randint(0, n, (60,), generator=g)
    keep = row != col
    edge_index = torch.cat([torch.stack([row[keep], col[keep]]), torch.stack([col[keep], row[keep]])], 1)
    data = Data(x=torch.randn(n, 5, generator=g), edge_index=edge_index, y=torch.arange(n) % 3,
                train_mask=torch.ones(n, dtype=torch.bool))
    clean = {tuple(p) for p in undirected_pairs(edge_index).t().tolist()}
    torch.manual_seed(0)

    def read(module, batch):
        return batch.edge_index.clone(), batch.y, module(batch.x, batch.edge_index)

    module = _Recorder(GCN(5, 3, hidden=8), read)
    attack = PRBCD(EdgeFlips(8), block_size=300, epochs=4, epochs_resampling=2, final_samples=2,
                   adapter=GraphAdapter(mask="train"), seed=0)
    _trainer(5, AdversarialTraining(attack, warmup_epochs=4)).fit(module, _Fresh(data.clone))
    flips = []
    for seen in module.seen:
        pairs = {tuple(p) for p in undirected_pairs(seen).t().tolist()}
        flips.append(len(pairs ^ clean))
    assert flips[0] == 0
    for f, k in zip((0.25, 0.5, 0.75, 1.0), flips[1:]):
        assert k <= math.floor(8 * f)
    assert flips[-1] > 0

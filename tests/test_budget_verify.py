"""Results always inside the threat model (issue 14, section 2): evaluation checks every returned point
independently of the attack's own bookkeeping, unbounded attacks never count outside the budget, and
budgets that cannot be meant get a warning or a clear error."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mmrobust
from mmrobust.attacks import FMN, PGD, Ensemble, Square
from mmrobust.attacks.base import Attack
from mmrobust.callbacks import RobustnessEvaluation
from mmrobust.errors import BudgetViolation
from mmrobust.threats import L2Ball, LinfBall, PeakDBBall, SNRBall
from mmrobust.threats.verify import violations

warnings.filterwarnings("ignore", ".*does not have many workers.*")
EPS = 0.1


class Cheat(Attack):
    """A deliberately broken attack: moves every pixel by ``factor * eps`` and reports size 0."""

    name = "cheat"

    def __init__(self, threat, factor=2.0, **kw):
        super().__init__(threat, **kw)
        self.factor = factor

    def perturb(self, victim, threats, target_labels, clean_logits):
        (name, threat), = threats.items()
        x = victim.inputs[name]
        moved = x + self.factor * threat.radius(x)[:, None, None, None] * torch.sign(0.5 - x)
        return {name: moved.clamp(0, 1) if self.factor <= 1.5 else moved}

    def finish(self, *args, **kwargs):
        result = super().finish(*args, **kwargs)
        result.size = {k: torch.zeros_like(v) for k, v in result.size.items()}  # lies about its size
        return result


def loader(digits, n=64):
    _, _, xt, yt = digits
    return DataLoader(TensorDataset(xt[:n], yt[:n]), batch_size=32)


def boxed(eps=EPS):
    return LinfBall(eps, lower=0.0, upper=1.0)


def test_evaluate_refuses_an_attack_that_leaves_its_budget(digits, digits_cnn):
    with pytest.raises(BudgetViolation, match="size 0.2.* > budget 0.1"):
        mmrobust.evaluate(digits_cnn, loader(digits), Cheat(boxed()), progress=False)


def test_evaluate_refuses_an_attack_that_leaves_the_box(digits, digits_cnn):
    with pytest.raises(BudgetViolation, match="box"):
        mmrobust.evaluate(digits_cnn, loader(digits), Cheat(LinfBall(0.5, lower=0.0, upper=1.0), factor=2.0),
                          progress=False)


def test_ensemble_refuses_a_member_that_leaves_its_budget(digits, digits_cnn):
    _, _, xt, yt = digits
    ensemble = Ensemble([PGD(boxed(), steps=2, seed=0), Cheat(boxed())])
    with pytest.raises(BudgetViolation, match="cheat|Cheat"):
        ensemble(digits_cnn, [xt[:32], yt[:32]])


class Module(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def validation_step(self, batch, batch_idx):
        pass


def validate(tmp_path, callback, model, data):
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.validate(Module(model), dataloaders=data, verbose=False)
    return trainer.callback_metrics


def test_robustness_evaluation_refuses_an_attack_that_leaves_its_budget(tmp_path, digits, digits_cnn):
    with pytest.raises(BudgetViolation):
        validate(tmp_path, RobustnessEvaluation({"cheat": Cheat(boxed())}), digits_cnn, loader(digits))


def test_robustness_evaluation_counts_uncapped_fmn_only_inside_the_budget(tmp_path, digits, digits_cnn):
    fmn = FMN(boxed(0.05), steps=20)
    logged = validate(tmp_path, RobustnessEvaluation({"fmn": fmn}), digits_cnn, loader(digits))
    expected = mmrobust.evaluate(digits_cnn, loader(digits), fmn, progress=False)["robust_accuracy"]
    assert logged["val/robust_acc"].item() == pytest.approx(expected)
    assert expected > 0


def test_honest_attacks_pass_the_check(digits, digits_cnn):
    out = mmrobust.evaluate(digits_cnn, loader(digits), [PGD(boxed(), steps=3, seed=0), Cheat(boxed(), factor=1.0),
                                                          FMN(boxed(), steps=10, cap=True)], progress=False)
    assert out["robust_accuracy"] <= out["clean_accuracy"]


def test_uncapped_fmn_never_counts_points_outside_the_budget(digits, digits_cnn):
    # the bug: FMN (cap=False) inside evaluate() turned "robust accuracy at eps 0.1" into accuracy under an
    # unbounded attack (0.505 -> 0.0)
    _, _, xt, yt = digits
    threat = boxed(0.05)
    fmn = FMN(threat, steps=20)
    raw = fmn(digits_cnn, [xt[:64], yt[:64]])
    inside = raw.size["image"] <= 0.05 * (1 + 1e-5)
    assert bool((raw.success & ~inside).any()), "the test needs FMN points beyond the budget"
    expected = (raw.clean_correct & ~(raw.success & inside)).float().mean().item()
    out = mmrobust.evaluate(digits_cnn, loader(digits), fmn, progress=False)
    assert out["robust_accuracy"] == pytest.approx(expected)
    assert out["robust_accuracy"] > (raw.clean_correct & ~raw.success).float().mean().item()
    ens = Ensemble([FMN(threat, steps=20)])(digits_cnn, [xt[:64], yt[:64]])
    assert ens.robust.float().mean().item() == pytest.approx(expected)
    assert bool((ens.size["image"] <= 0.05 * (1 + 1e-5)).all())


def test_graph_flips_over_budget_or_per_node_limit_are_found():
    pytest.importorskip("torch_geometric")
    from torch_geometric.data import Data

    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.threats import EdgeFlips

    ring = torch.arange(8)
    ei = torch.stack([ring, (ring + 1) % 8])
    ei = torch.cat([ei, ei.flip(0)], 1)
    data = Data(x=torch.randn(8, 3), edge_index=ei, y=torch.zeros(8, dtype=torch.long))
    victim = GraphAdapter(mask=None).victim(nn.Linear(3, 2), data)
    extra = torch.tensor([[0, 0, 0], [3, 4, 5]])  # three new pairs, all at node 0
    adv = torch.cat([ei, extra, extra.flip(0)], 1)
    found = violations(victim, {"edge_index": adv}, {"edges": EdgeFlips(2, max_flips_per_node=1)})["edges"]
    reasons = " ".join(found)
    assert "3 pairs > budget 2" in reasons and "max_flips_per_node 1" in reasons
    assert not violations(victim, {"edge_index": adv}, {"edges": EdgeFlips(3, max_flips_per_node=3)})
    one_way = torch.cat([ei, torch.tensor([[0], [4]])], 1)
    assert "undirected" in " ".join(violations(victim, {"edge_index": one_way}, {"edges": EdgeFlips(5)})["edges"])


def test_edge_fraction_counts_distinct_undirected_edges():
    # the bug: EdgeFlips(0.1) allowed 8 flips on a graph with 64 distinct undirected edges given twice over
    pytest.importorskip("torch_geometric")
    from torch_geometric.data import Data

    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.threats import EdgeFlips

    g = torch.Generator().manual_seed(0)
    pairs = set()
    while len(pairs) < 64:
        a, b = torch.randint(0, 30, (2,), generator=g).tolist()
        if a != b:
            pairs.add((min(a, b), max(a, b)))
    p = torch.tensor(sorted(pairs)).t()
    ei = torch.cat([p, p.flip(0), p[:, :16], p[:, :16].flip(0)], 1)  # 16 edges stored twice
    data = Data(x=torch.randn(30, 3), edge_index=ei, y=torch.zeros(30, dtype=torch.long))
    graph = GraphAdapter(mask=None).victim(nn.Linear(3, 2), data).meta["graph"]
    assert int(graph.undirected_edges[0]) == 64
    assert int(EdgeFlips(0.1).flips_allowed(graph.undirected_edges)[0]) == 6


def test_l2_pgd_with_a_huge_budget_and_no_box_is_not_a_no_op():
    # the bug: float32 norms overflowed, the projection scaled every step to 0 (robust = clean, ||delta|| = 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 3))
    x, y = torch.randn(6, 10), torch.arange(6) % 3
    result = PGD(L2Ball(1e20), steps=3, seed=0)(model, [x, y])
    size = (result.inputs["x"] - x).norm(dim=1) if "x" in result.inputs else None
    delta = next(iter(result.inputs.values())).double() - x.double()
    assert bool((delta.norm(dim=1) > 1e18).all())
    assert bool((delta.norm(dim=1) <= 1e20 * (1 + 1e-5)).all())
    assert size is None or bool(torch.isfinite(size).all())


@pytest.mark.parametrize("eps, match", [(1e30, "eps of L2Ball"), (1e39, "eps=1e\\+39")])
def test_square_with_a_huge_l2_budget_names_eps(eps, match):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            Square(L2Ball(eps), n_queries=5, seed=0)(model, [x, y])


def test_square_with_a_huge_budget_inside_a_box_searches_the_box():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    result = Square(L2Ball(1e30, lower=0, upper=1), n_queries=10, seed=0)(model, [x, y])
    adv = next(iter(result.inputs.values()))
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1 and bool(torch.isfinite(adv).all())


@pytest.mark.parametrize("make, hint", [
    (lambda: LinfBall(8, lower=0, upper=1), "8/255 = 0.03137"),
    (lambda: SNRBall(0.03), "SNRBall\\(30.5\\)"),
    (lambda: SNRBall(-30), "SNRBall\\(30\\)"),
    (lambda: PeakDBBall(31), "PeakDBBall\\(-31\\)"),
])
def test_nonsensical_budgets_warn_with_the_likely_value(make, hint):
    with pytest.warns(UserWarning, match=hint):
        make()


def test_sensible_budgets_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinfBall(8 / 255, lower=0, upper=1), LinfBall(1.0, lower=0, upper=1), SNRBall(30), PeakDBBall(-31)
        L2Ball(0.5, lower=0, upper=1).check_input(torch.rand(2, 1, 4, 4))


def test_image_attack_without_a_box_warns():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.warns(UserWarning, match="lower=0, upper=1"):
        PGD(LinfBall(0.1), steps=1)(model, [torch.rand(2, 1, 4, 4), torch.tensor([0, 1])])


def test_snr_budget_is_checked_per_example(digits):
    torch.manual_seed(0)
    wave = torch.rand(4, 200) * 0.5 - 0.25
    batch = {"audio": wave, "label": torch.tensor([0, 1, 0, 1])}
    model = nn.Linear(200, 2)
    result = PGD(SNRBall(20.0), steps=3, seed=0)(model, batch)
    from mmrobust.threats.verify import verify_result
    assert verify_result(PGD(SNRBall(20.0), steps=3), model, batch, result) is result
    louder = {**result.inputs, "audio": wave + 3 * (result.inputs["audio"] - wave)}
    with pytest.raises(BudgetViolation, match="snr|budget"):
        verify_result(PGD(SNRBall(20.0), steps=3), model, batch,
                      type(result)(**{**result.__dict__, "inputs": louder}))
    assert math.isfinite(float(result.size["audio"].max()))


@pytest.mark.parametrize("threat", [SNRBall(30, lower=-1, upper=1), PeakDBBall(-30, lower=-1, upper=1)])
def test_universal_delta_with_a_relative_budget_is_verified_at_its_reference(threat):
    """A universal delta's dB budget holds at the reference signal, not per input: evaluate() checks the
    points against the absolute ball of that radius (and would still refuse a delta outside it)."""
    from mmrobust.attacks import UniversalPerturbation

    torch.manual_seed(0)
    x = (torch.randn(16, 1, 400) * torch.linspace(0.01, 0.3, 16)[:, None, None]).clamp(-1, 1)
    y = torch.randint(0, 3, (16,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(400, 3))
    loader = [(x[:8], y[:8]), (x[8:], y[8:])]
    universal = UniversalPerturbation(threat, reference_level=0.3)
    universal.fit(model, loader)
    radius = float(universal.radius(universal.delta))
    added = (universal.apply(x, universal.delta) - x).flatten(1)
    size = added.norm(dim=1) if threat.norm == "l2" else added.abs().amax(1)
    assert bool((size <= radius * (1 + 1e-5)).all())  # independent of the attack's bookkeeping
    quiet_input_exceeds_its_own_ball = bool((size > threat.radius(x).flatten() * 1.01).any())
    assert quiet_input_exceeds_its_own_ball  # the case that used to raise BudgetViolation
    result = mmrobust.evaluate(model, loader, {"universal": universal})
    assert 0.0 <= result["robust_accuracy"] <= result["clean_accuracy"]
    # a universal delta is weaker than FGSM by design and fixed at attack time: the rerun checks do not judge it
    reruns = {c["name"]: c for c in result["checks"] if c["name"] in ("transfer_gap", "budget_curve")}
    assert reruns and all(not c["fired"] and not c["ran"] for c in reruns.values()), reruns
    n = universal.delta.numel() if threat.norm == "l2" else 1
    universal.delta = torch.full_like(universal.delta, 2 * radius / n ** 0.5)  # twice the reference radius: refused
    with pytest.raises(BudgetViolation, match="outside its threat model"):
        mmrobust.evaluate(model, loader, {"universal": universal})

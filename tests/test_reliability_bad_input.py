"""Bad input and faults across attacks, threats, adapters, callbacks and metrics.

* bad arguments and bad batches raise errors that name the argument and the accepted range;
* NaN/Inf appearing during any attack family raises :class:`~mmrobust.errors.NonFiniteError` and never
  reaches a metric;
* an exception inside any callback or attack leaves the model's weights, modes, flags, hooks and
  parametrisations as they were.
"""

from __future__ import annotations

import copy
import sys

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from _reliability_common import DigitsModule, digits_loader, trainer, weights
from mmrobust.adapters import WaveformAdapter
from mmrobust.attacks import APGD, FGSM, FMN, PGD, Ensemble, Square
from mmrobust.callbacks import (AdversarialTraining, AdversarialWeightPerturbation, Pruning, Quantization,
                                RandomBitErrorTraining, RobustnessEvaluation)
from mmrobust.compression import quantized_modules
from mmrobust.errors import NonFiniteError
from mmrobust.evaluation import evaluate
from mmrobust.metrics import RobustAccuracy
from mmrobust.threats import EdgeFlips, FeatureBall, L2Ball, LinfBall, PeakDBBall, SNRBall, WeightBall

BOX = LinfBall(0.1, lower=0, upper=1)

ATTACKS = {
    "PGD": lambda t: PGD(t, steps=3, seed=0),
    "APGD": lambda t: APGD(t, steps=3, seed=0),
    "Square": lambda t: Square(t, n_queries=6, seed=0),
    "FMN": lambda t: FMN(t, steps=3),
    "Ensemble": lambda t: Ensemble([PGD(t, steps=2, seed=0), Square(t, n_queries=4, seed=0)]),
}


def linear_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


# -- bad arguments ------------------------------------------------------------------------------------
BAD_ARGUMENTS = [
    ("LinfBall(-1)", lambda: LinfBall(-1.0), ValueError, r"eps must be a finite number >= 0, got -1"),
    ("LinfBall(nan)", lambda: LinfBall(float("nan")), ValueError, r"eps must be a finite number >= 0, got nan"),
    ("L2Ball(inf)", lambda: L2Ball(float("inf")), ValueError, r"eps must be a finite number >= 0, got inf"),
    ("LinfBall('0.1')", lambda: LinfBall("0.1"), TypeError, r"eps must be a real number"),
    ("box lower >= upper", lambda: LinfBall(0.1, lower=1, upper=0), ValueError, r"lower < upper"),
    ("SNRBall(nan)", lambda: SNRBall(float("nan")), ValueError, r"snr_db must be a finite number of decibels"),
    ("PeakDBBall(inf)", lambda: PeakDBBall(float("inf")), ValueError, r"must be a finite number of decibels"),
    ("SNRBall('10')", lambda: SNRBall("10"), TypeError, r"snr_db must be a real number of decibels"),
    ("EdgeFlips(-1)", lambda: EdgeFlips(-1), ValueError, r"budget must be an integer >= 0, got -1"),
    ("EdgeFlips(1.5)", lambda: EdgeFlips(1.5), ValueError, r"budget must lie in \[0, 1\], got 1.5"),
    ("EdgeFlips(nan)", lambda: EdgeFlips(float("nan")), ValueError, r"budget must lie in \[0, 1\], got nan"),
    ("EdgeFlips('3')", lambda: EdgeFlips("3"), TypeError, r"budget must be an int"),
    ("FeatureBall(norm='l7')", lambda: FeatureBall(0.1, norm="l7"), ValueError, r"norm must be one of"),
    ("WeightBall(-1)", lambda: WeightBall(-1.0), ValueError, r"gamma must be a finite number >= 0"),
    ("WeightBall(nan)", lambda: WeightBall(float("nan")), ValueError, r"gamma must be a finite number >= 0"),
    ("PGD(steps=0)", lambda: PGD(BOX, steps=0), ValueError, r"steps must be an integer >= 1, got 0"),
    ("PGD(step_size=-1)", lambda: PGD(BOX, step_size=-1.0), ValueError, r"step_size must be a finite number > 0"),
    ("PGD(restarts=1.5)", lambda: PGD(BOX, restarts=1.5), TypeError, r"restarts must be an integer >= 1"),
    ("PGD(threat=0.1)", lambda: PGD(0.1), TypeError, r"threat must be a ThreatModel"),
    ("PGD(loss='nope')", lambda: PGD(BOX, loss="nope"), (KeyError, ValueError), r"nope"),
    ("APGD(rho=2)", lambda: APGD(BOX, rho=2.0), ValueError, r"rho must lie in \[0, 1\], got 2"),
    ("Square(n_queries=0)", lambda: Square(BOX, n_queries=0), ValueError, r"n_queries must be an integer >= 1"),
    ("Square(p_init=2)", lambda: Square(BOX, p_init=2.0), ValueError, r"p_init must lie in \(0, 1\]"),
    ("FMN(steps=0)", lambda: FMN(BOX, steps=0), ValueError, r"steps must be an integer >= 1"),
    ("FMN(gamma=-1)", lambda: FMN(BOX, gamma=-1.0), ValueError, r"gamma must lie in \(0, 1\)"),
    ("Ensemble([])", lambda: Ensemble([]), TypeError, r"attacks must be a non-empty sequence of Attack"),
    ("AdversarialTraining(attack='pgd')", lambda: AdversarialTraining("pgd"), TypeError,
     r"attack must be an mmrobust Attack"),
    ("AdversarialTraining(ratio=0)", lambda: AdversarialTraining(PGD(BOX), ratio=0), ValueError,
     r"ratio must lie in \(0, 1\]"),
    ("AdversarialTraining(targeted)", lambda: AdversarialTraining(PGD(BOX, targeted=True)), ValueError, r"untargeted"),
    ("AdversarialTraining(warmup_epochs=nan)", lambda: AdversarialTraining(PGD(BOX), warmup_epochs=float("nan")),
     ValueError, r"warmup_epochs must be a finite number >= 0"),
    ("AWP(gamma=-1)", lambda: AdversarialWeightPerturbation(-1.0), ValueError, r"gamma must be a finite number >= 0"),
    ("AWP(steps=0)", lambda: AdversarialWeightPerturbation(steps=0), ValueError, r"steps must be an integer >= 1"),
    ("Pruning(sparsity=1.5)", lambda: Pruning(1.5), ValueError, r"sparsity must lie in \[0, 1\], got 1.5"),
    ("Pruning(initial > final)", lambda: Pruning(0.3, initial_sparsity=0.5), ValueError,
     r"initial_sparsity must be <= sparsity"),
    ("Pruning(end < begin)", lambda: Pruning(0.5, begin_step=10, end_step=5), ValueError,
     r"end_step must be an integer >= 10"),
    ("Pruning(scope='net')", lambda: Pruning(0.5, scope="net"), ValueError, r"scope must be one of \['global', 'layer'\]"),
    ("Quantization(bits=9)", lambda: Quantization(bits=9), ValueError, r"bits must be an integer in \[2, 8\]"),
    ("Quantization(bits=1)", lambda: Quantization(bits=1), ValueError, r"bits must be an integer >= 2"),
    ("Quantization(clip=-1)", lambda: Quantization(clip=-1.0), ValueError, r"clip must be a finite number > 0"),
    ("RandomBitErrorTraining(rate=2)", lambda: RandomBitErrorTraining(2.0), ValueError, r"rate must lie in \[0, 1\]"),
    ("RandomBitErrorTraining(weight=nan)", lambda: RandomBitErrorTraining(0.01, weight=float("nan")), ValueError,
     r"weight must be a finite number >= 0"),
    ("RobustnessEvaluation(every_n_epochs=0)", lambda: RobustnessEvaluation(PGD(BOX), every_n_epochs=0), ValueError,
     r"every_n_epochs must be an integer >= 1"),
    ("RobustnessEvaluation(stages=['train'])", lambda: RobustnessEvaluation(PGD(BOX), stages=["train"]), ValueError,
     r"stages entries must be one of \['test', 'validate'\]"),
    ("RobustAccuracy.update('x')", lambda: RobustAccuracy().update("x"), TypeError,
     r"results must be an AttackResult or a non-empty list"),
    ("RobustAccuracy.update([])", lambda: RobustAccuracy().update([]), TypeError,
     r"results must be an AttackResult or a non-empty list"),
]


@pytest.mark.parametrize("make, error, message", [c[1:] for c in BAD_ARGUMENTS], ids=[c[0] for c in BAD_ARGUMENTS])
def test_bad_arguments_name_the_argument_and_the_accepted_range(make, error, message):
    with pytest.raises(error, match=message):
        make()


# -- bad batches, every attack family -----------------------------------------------------------------
class WrongShape(nn.Module):
    def __init__(self, reshape):
        super().__init__()
        self.net, self.reshape = linear_net(), reshape

    def forward(self, x):
        return self.reshape(self.net(x))


X = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3])

BAD_BATCHES = [
    ("integer inputs", lambda n: (n, ((X * 255).long(), Y)), TypeError, r"input must be a floating-point tensor"),
    ("empty batch", lambda n: (n, (X[:0], Y[:0])), ValueError, r"batch >= 1, got \(0, 1, 8, 8\)"),
    ("label 10 of 10 classes", lambda n: (n, (X, torch.tensor([0, 1, 2, 10]))), ValueError,
     r"labels must lie in \[0, 9\] for a model with 10 outputs"),
    ("negative label", lambda n: (n, (X, torch.tensor([0, -1, 2, 3]))), ValueError, r"labels must lie in \[0, 9\]"),
    ("labels of the wrong length", lambda n: (n, (X, Y[:3])), ValueError, r"targets must have shape \(4,\)"),
    ("float labels", lambda n: (n, (X, Y.float())), TypeError, r"targets must be an integer tensor"),
    ("inputs outside the box", lambda n: (n, (X * 3, Y)), ValueError, r"above the threat model's upper bound 1"),
    ("model returns (B, 2, 5)", lambda n: (WrongShape(lambda o: o.reshape(-1, 2, 5)), (X, Y)), ValueError,
     r"logits of shape \(outputs, classes\) = \(4, C\)"),
    ("model returns (B * C,)", lambda n: (WrongShape(lambda o: o.flatten()), (X, Y)), ValueError,
     r"logits of shape \(outputs, classes\) = \(4, C\)"),
    ("model returns 2 rows", lambda n: (WrongShape(lambda o: o[:2]), (X, Y)), ValueError,
     r"logits of shape \(outputs, classes\) = \(4, C\)"),
]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("case, error, message", [(c[1], c[2], c[3]) for c in BAD_BATCHES],
                         ids=[c[0] for c in BAD_BATCHES])
def test_every_attack_refuses_bad_batches_clearly(attack, case, error, message):
    model, batch = case(linear_net())
    before = [t.clone() for t in batch]
    with pytest.raises(error, match=message):
        ATTACKS[attack](BOX)(model, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, batch))


AUDIO_BATCHES = [
    ("int16 PCM", lambda w: ((w * 32000).to(torch.int16),), TypeError,
     r"wave has integer dtype torch.int16; .*convert with wave.float\(\) / 32768"),
    ("samples outside [-1, 1]", lambda w: (w * 3,), ValueError, r"wave must have samples in \[-1, 1\]"),
    ("NaN samples", lambda w: (w * float("nan"),), ValueError, r"wave contains NaN or Inf samples"),
    ("4-d waveform", lambda w: (w[:, None, None],), ValueError, r"wave must have shape \(batch, time\)"),
    ("empty batch", lambda w: (w[:0],), ValueError, r"wave must have shape \(batch, time\).* batch, time >= 1"),
]


@pytest.mark.parametrize("threat", [SNRBall(20.0), PeakDBBall(-20.0)], ids=["SNRBall", "PeakDBBall"])
@pytest.mark.parametrize("case, error, message", [c[1:] for c in AUDIO_BATCHES], ids=[c[0] for c in AUDIO_BATCHES])
def test_audio_attacks_refuse_bad_waveforms_clearly(threat, case, error, message):
    torch.manual_seed(0)
    model = nn.Linear(100, 10)
    wave = torch.rand(4, 100) * 2 - 1
    (bad,) = case(wave)
    labels = Y[:bad.shape[0]]
    with pytest.raises(error, match=message):
        PGD(threat, steps=2, adapter=WaveformAdapter())(model, (bad, labels))


@pytest.fixture(scope="module")
def small_graph():
    pytest.importorskip("torch_geometric")
    from mmrobust.graph.data import sbm_graph
    from mmrobust.graph.models import GCN

    data = sbm_graph(num_nodes=40, num_classes=3, p_in=0.2, p_out=0.02, seed=0)
    torch.manual_seed(0)
    return GCN(data.num_features, 3, hidden=8).eval(), data


def _graph_attacks():
    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.attacks import GRBCD, PRBCD

    return {"PRBCD": lambda t: PRBCD(t, block_size=300, epochs=3, epochs_resampling=2, seed=0,
                                     adapter=GraphAdapter(mask="test")),
            "GRBCD": lambda t: GRBCD(t, block_size=300, epochs=3, seed=0, adapter=GraphAdapter(mask="test"))}


def _without(attr):
    def edit(d):
        delattr(d, attr)
    return edit


GRAPH_FAULTS = [
    ("budget above the candidate pairs", lambda d: None, EdgeFlips(10 ** 6), ValueError,
     r"edge budget \(1000000 flips\) exceeds the 780 candidate node pairs of graph 0"),
    ("no test_mask", _without("test_mask"), EdgeFlips(3), KeyError, r"the graph has no 'test_mask'"),
    ("empty test_mask", lambda d: setattr(d, "test_mask", torch.zeros_like(d.test_mask)), EdgeFlips(3), ValueError,
     r"the mask selects no nodes"),
    ("labels out of range", lambda d: setattr(d, "y", d.y + 5), EdgeFlips(3), ValueError,
     r"labels must lie in \[0, 2\] for a model with 3 outputs"),
    ("integer features", lambda d: setattr(d, "x", d.x.long()), EdgeFlips(3), TypeError,
     r"floating-point node features data.x"),
    ("no labels", _without("y"), EdgeFlips(3), ValueError, r"data.y \(labels\) is needed"),
]


@pytest.mark.parametrize("attack", ["PRBCD", "GRBCD"])
@pytest.mark.parametrize("edit, threat, error, message", [c[1:] for c in GRAPH_FAULTS], ids=[c[0] for c in GRAPH_FAULTS])
def test_graph_attacks_refuse_bad_graphs_clearly(small_graph, attack, edit, threat, error, message):
    model, data = small_graph
    bad = data.clone()
    edit(bad)
    with pytest.raises(error, match=message):
        _graph_attacks()[attack](threat)(model, bad)


# -- NaN/Inf during an attack ------------------------------------------------------------------------
class TurnsNonFinite(nn.Module):
    """Finite for the first ``after`` forward passes, then Inf/NaN logits (an overflow mid-attack)."""

    def __init__(self, net, after):
        super().__init__()
        self.net, self.after, self.calls = net, after, 0

    def forward(self, *args):
        self.calls += 1
        out = self.net(*args)
        return out * float("inf") if self.calls > self.after else out


@pytest.mark.parametrize("after", [0, 2], ids=["clean pass", "mid-attack"])
@pytest.mark.parametrize("attack", sorted(ATTACKS) + ["FGSM"])
def test_non_finite_values_during_any_attack_are_reported_not_scored(attack, after):
    make = ATTACKS.get(attack, lambda t: FGSM(t))
    model = TurnsNonFinite(linear_net(), after)
    metric = RobustAccuracy()
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        metric.update(make(BOX)(model, (X, Y)))
    assert metric.total == 0  # nothing reached the metric
    with pytest.raises(NonFiniteError):
        evaluate(TurnsNonFinite(linear_net(), after), [(X, Y)], {"a": make(BOX)}, progress=False)


@pytest.mark.parametrize("attack", ["PRBCD", "GRBCD"])
def test_non_finite_values_during_graph_attacks_are_reported(small_graph, attack):
    model, data = small_graph
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        _graph_attacks()[attack](EdgeFlips(3))(TurnsNonFinite(model, 2), data)


def test_non_finite_values_during_validation_stop_the_run_instead_of_logging(digits, tmp_path):
    module = DigitsModule()
    module.net = TurnsNonFinite(module.net, 10 ** 9)
    evaluation = RobustnessEvaluation(PGD(BOX, steps=2, seed=0))
    t = trainer(tmp_path, [evaluation], max_epochs=1, limit_train_batches=1)
    module.net.after = 0
    with pytest.raises(NonFiniteError):
        t.validate(module, digits_loader(digits, n=32))
    assert "val/robust_acc" not in t.callback_metrics


# -- exceptions inside callbacks and attacks restore the model -----------------------------------------
class Boom(RuntimeError):
    pass


def _inside(names) -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in names:
            return True
        frame = frame.f_back
    return False


class Fuse(nn.Module):
    """Raises :class:`Boom` on a forward pass made from one of ``where`` (function names), at step ``step``."""

    def __init__(self, net, where, step=1):
        super().__init__()
        self.net, self.where, self.step, self.global_step = net, set(where), step, 0

    def forward(self, x):
        if self.global_step >= self.step and _inside(self.where):
            raise Boom(f"raised inside {sorted(self.where)}")
        return self.net(x)


class Snapshot(pl.Callback):
    """Records the module's weights, modes, flags, hooks and parametrisations when each batch starts."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.net.global_step = trainer.global_step
        self.state = model_state(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.state = model_state(pl_module)


def model_state(module):
    return {"weights": weights(module),
            "modes": [m.training for m in module.modules()],
            "flags": [p.requires_grad for p in module.parameters()],
            "grads": [None if p.grad is None else p.grad.clone() for p in module.parameters()],
            "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                      for m in module.modules()],
            "parametrized": sorted(n for n, m in module.named_modules() if hasattr(m, "parametrizations")),
            "flips": [fq.flips is None for _, _, fq in quantized_modules(module)]}


def _pgd(steps=2):
    return PGD(BOX, steps=steps, seed=0)


# (callbacks, function names where the forward raises, stage)
CALLBACK_FAULTS = {
    "AdversarialTraining during the attack": (lambda: [AdversarialTraining(_pgd())], ["perturb"], "fit"),
    "AdversarialTraining ratio<1 during the attack": (lambda: [AdversarialTraining(_pgd(), ratio=0.5)], ["perturb"],
                                                      "fit"),
    "AWP during the weight search": (lambda: [AdversarialWeightPerturbation(0.01)], ["find_perturbation"], "fit"),
    "AWP in training_step at w + v": (lambda: [AdversarialWeightPerturbation(0.01)], ["training_step"], "fit"),
    "Pruning in training_step after a mask update": (lambda: [Pruning(0.5, begin_step=1, end_step=3, frequency=1)],
                                                     ["training_step"], "fit"),
    "Quantization in training_step": (lambda: [Quantization(bits=4, clip=0.2)], ["training_step"], "fit"),
    "RandomBitErrorTraining in the bit-error pass": (
        lambda: [Quantization(bits=8, clip=0.2), RandomBitErrorTraining(0.05, seed=0)], ["on_after_backward"], "fit"),
    "RobustnessEvaluation during a validation attack": (lambda: [RobustnessEvaluation(_pgd())], ["perturb"],
                                                        "validate"),
}


@pytest.mark.parametrize("case", sorted(CALLBACK_FAULTS))
def test_an_exception_inside_a_callback_leaves_the_model_as_it_was(case, digits, tmp_path):
    make, where, stage = CALLBACK_FAULTS[case]
    module = DigitsModule()
    module.net = Fuse(module.net, where, step=1)
    snapshot = Snapshot()
    t = trainer(tmp_path, [snapshot] + make(), max_epochs=1)
    with pytest.raises(Boom):
        if stage == "fit":
            t.fit(module, digits_loader(digits, n=64))
        else:
            module.net.step = 0
            t.validate(module, digits_loader(digits, n=32))
    after = model_state(module)
    before = snapshot.state
    for key in ("weights",):
        assert before[key].keys() == after[key].keys()
        changed = [k for k in before[key] if not torch.equal(before[key][k], after[key][k])]
        assert not changed, f"{case}: {changed} changed"
    for key in ("modes", "flags", "hooks", "parametrized", "flips"):
        assert before[key] == after[key], f"{case}: {key} not restored"
    if "during" in case:  # the exception came from the callback's own work, before any backward of the step
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before["grads"], after["grads"]))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_exception_inside_an_attack_leaves_the_model_as_it_was(attack, digits_cnn, digits):
    model = Fuse(copy.deepcopy(digits_cnn), ["perturb", "_search", "evaluate"], step=0)
    model.train()
    model.net[0].eval()  # a mixed-mode model
    params = list(model.parameters())
    params[-1].requires_grad_(False)
    params[0].grad = torch.ones_like(params[0])
    before = model_state(model)
    x, y = digits[2][:8], digits[3][:8]
    with pytest.raises(Boom):
        ATTACKS[attack](BOX)(model, (x, y))
    after = model_state(model)
    assert all(torch.equal(before["weights"][k], after["weights"][k]) for k in before["weights"])
    for key in ("modes", "flags", "hooks"):
        assert before[key] == after[key], key
    assert torch.equal(params[0].grad, torch.ones_like(params[0])) and params[1].grad is None


# -- callbacks: bad batches and bad set-ups --------------------------------------------------------------
class ManualModule(DigitsModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(nn.functional.cross_entropy(self(batch[0]), batch[1]))
        opt.step()


def _tuple_collate(samples):
    return tuple(torch.stack(t) for t in zip(*samples))


def _bad_label(y):
    y = y.clone()
    y[3] = 10
    return y


CALLBACK_SETUPS = [
    ("AdversarialTraining, label 10 of 10 classes", lambda: [AdversarialTraining(PGD(BOX, steps=1))], None,
     lambda x, y: (x, _bad_label(y)), None, ValueError,
     r"labels must lie in \[0, 9\] .* got values in \[0, 10\]"),
    ("AdversarialTraining, integer images", lambda: [AdversarialTraining(PGD(BOX, steps=1))], None,
     lambda x, y: ((x * 16).long(), y), None, TypeError, r"input must be a floating-point tensor"),
    ("AdversarialTraining, images outside the box", lambda: [AdversarialTraining(PGD(BOX, steps=1))], None,
     lambda x, y: (x * 3, y), None, ValueError, r"above the threat model's upper bound 1"),
    ("AdversarialTraining, tuple batches", lambda: [AdversarialTraining(PGD(BOX, steps=1))], None,
     lambda x, y: (x, y), _tuple_collate, TypeError, r"immutable tuple; return a list or a dict"),
    ("RandomBitErrorTraining without Quantization", lambda: [RandomBitErrorTraining(0.01)], None,
     lambda x, y: (x, y), None, RuntimeError,
     r"needs quantised weights; add the Quantization callback to Trainer\(callbacks=\[...\]\) \(in any order\)"),
    ("RandomBitErrorTraining with manual optimisation", lambda: [Quantization(), RandomBitErrorTraining(0.01)],
     ManualModule, lambda x, y: (x, y), None, RuntimeError, r"needs automatic optimisation"),
    ("AWP loss_fn returning a vector",
     lambda: [AdversarialWeightPerturbation(0.01, loss_fn=lambda m, b: m(b[0]).sum(0))], None,
     lambda x, y: (x, y), None, ValueError, r"loss_fn must return a scalar tensor"),
    ("Pruning, no prunable layer", lambda: [Pruning(0.5, types=(nn.LSTM,))], None, lambda x, y: (x, y), None,
     ValueError, r"no layer of types \['LSTM'\] to prune"),
    ("Quantization, no quantisable layer", lambda: [Quantization(types=(nn.LSTM,))], None, lambda x, y: (x, y),
     None, ValueError, r"no layer of types \['LSTM'\] to quantise"),
]


@pytest.mark.parametrize("callbacks, module, edit, collate, error, message", [c[1:] for c in CALLBACK_SETUPS],
                         ids=[c[0] for c in CALLBACK_SETUPS])
def test_callbacks_refuse_bad_batches_and_setups_clearly(callbacks, module, edit, collate, error, message, digits,
                                                         tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    x, y = edit(digits[0][:32], digits[1][:32])
    loader = DataLoader(TensorDataset(x, y), batch_size=16, collate_fn=collate)
    model = (module or DigitsModule)()
    before = weights(model)
    with pytest.raises(error, match=message):
        trainer(tmp_path, callbacks(), max_epochs=1).fit(model, loader)
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before if k in after)  # failed before any update

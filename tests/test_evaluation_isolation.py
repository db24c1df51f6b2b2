"""evaluate() and Ensemble leave the user's attack objects alone, and members work as written.

* the same attack object and the same call give the same number (composites included: an Ensemble's
  members and an EOT's inner attack are private copies, random generators included), and the user's
  attack is unchanged afterwards, also after an exception;
* an Ensemble honours each member's own adapter (WaveformAdapter members need none on the ensemble);
* float64 models work in PGD/APGD/Ensemble, ``evaluate`` and ``Trainer(precision="64-true")`` +
  RobustnessEvaluation;
* out-of-range labels raise the library's LabelError from every entry point, ``generate`` included.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _reliability_common import DigitsModule, digits_loader, trainer
from mmrobust import evaluate
from mmrobust.adapters.audio import WaveformAdapter
from mmrobust.attacks import APGD, APGDT, EOT, FGSM, FMN, PGD, Attack, Ensemble, Square
from mmrobust.callbacks import RobustnessEvaluation
from mmrobust.errors import LabelError
from mmrobust.threats import LinfBall, SNRBall

BOX = LinfBall(0.1, lower=0, upper=1)


def noise(x, generator):
    return (x + 0.1 * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp(0, 1)


COMPOSITES = {
    "Ensemble": lambda: Ensemble([PGD(BOX, steps=2, seed=0), PGD(BOX, steps=2, seed=1, loss="dlr")]),
    "EOT": lambda: EOT(PGD(BOX, steps=2, seed=0), noise, samples=2, eval_samples=0, seed=0),
    "Ensemble of EOT": lambda: Ensemble([EOT(PGD(BOX, steps=1, seed=0), noise, samples=1, eval_samples=0, seed=0),
                                         PGD(BOX, steps=1, seed=2)]),
}


def _rng_states(attack):
    """Every generator state reachable from the attack (members and inner attacks included)."""
    out = [None if attack._generator is None else attack._generator.get_state()]
    for member in getattr(attack, "attacks", []):
        out += _rng_states(member)
    if isinstance(getattr(attack, "attack", None), Attack):
        out += _rng_states(attack.attack)
    return out


def _same(a, b):
    return len(a) == len(b) and all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_evaluating_twice_gives_the_same_number_and_leaves_the_attack_alone(name, digits_cnn, digits):
    attack = COMPOSITES[name]()
    attack(digits_cnn, (digits[2][:8], digits[3][:8]))  # a used attack: generators already drawn from
    before = _rng_states(attack)
    data = [(digits[2][i:i + 64], digits[3][i:i + 64]) for i in range(0, 192, 64)]
    first = evaluate(digits_cnn, data, attack, progress=False)
    assert _same(before, _rng_states(attack))
    second = evaluate(digits_cnn, data, attack, progress=False)
    assert first["robust_accuracy"] == second["robust_accuracy"]
    assert first["per_attack"] == second["per_attack"]
    assert _same(before, _rng_states(attack))


class Fails(nn.Module):
    def __init__(self, model, after: int):
        super().__init__()
        self.model, self.calls, self.after = model, 0, after

    def forward(self, x):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return self.model(x)


def test_the_attack_is_unchanged_after_an_exception(digits_cnn, digits):
    attack = COMPOSITES["Ensemble"]()
    before = _rng_states(attack)
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(Fails(copy.deepcopy(digits_cnn), after=4), [(digits[2][:32], digits[3][:32])], attack,
                 progress=False)
    assert _same(before, _rng_states(attack))
    assert all(m.early_stop is False for m in attack.attacks)


def test_private_copy_shares_no_generator_and_continues_the_stream():
    attack = Ensemble([PGD(BOX, seed=3), EOT(PGD(BOX, seed=4), noise, seed=5)])
    for g in (attack.attacks[0].generator(), attack.attacks[1].generator(), attack.attacks[1].attack.generator()):
        torch.rand(3, generator=g)
    clone = attack.private_copy()
    pairs = [(attack.attacks[0], clone.attacks[0]), (attack.attacks[1], clone.attacks[1]),
             (attack.attacks[1].attack, clone.attacks[1].attack)]
    for original, copied in pairs:
        assert copied is not original and copied._generator is not original._generator
        assert torch.equal(torch.rand(4, generator=copied._generator), torch.rand(4, generator=original._generator))
    assert clone.attacks is not attack.attacks and clone.threat is attack.threat


# -- members' adapters ------------------------------------------------------------------------------------
def _speech_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(400, 32), nn.Tanh(), nn.Linear(32, 4))


def test_ensemble_honours_its_members_adapters():
    model = _speech_model()
    torch.manual_seed(1)
    wave = 0.5 * torch.rand(16, 400) - 0.25
    y = model(wave).argmax(1)
    threat = SNRBall(20)
    members = lambda adapter: [PGD(threat, steps=3, seed=0, adapter=adapter), APGD(threat, steps=3, seed=1,
                                                                                    adapter=adapter)]
    own = Ensemble(members(WaveformAdapter()))(model, (wave, y))  # no adapter on the ensemble
    shared = Ensemble(members(None), adapter=WaveformAdapter())(model, (wave, y))
    assert torch.equal(own.inputs["audio"], shared.inputs["audio"])
    assert torch.equal(own.robust, shared.robust) and int(own.robust.sum()) < int(own.clean_correct.sum())
    result = evaluate(model, [(wave, y)], Ensemble(members(WaveformAdapter())), progress=False)
    assert result["robust_accuracy"] == pytest.approx(float(own.robust.float().mean()))


# -- float64 ---------------------------------------------------------------------------------------------
FP64_ATTACKS = {
    "PGD": lambda: PGD(BOX, steps=3, seed=0),
    "APGD": lambda: APGD(BOX, steps=3, seed=0),
    "APGD-T": lambda: APGDT(BOX, steps=3, n_target_classes=2, seed=0),
    "Square": lambda: Square(BOX, n_queries=20, seed=0),
    "FMN": lambda: FMN(BOX, steps=5, cap=True),
    "Ensemble.standard": lambda: Ensemble.standard(BOX, steps=3, n_target_classes=2, n_queries=20),
}


@pytest.mark.parametrize("name", sorted(FP64_ATTACKS))
def test_float64_models_in_evaluate(name, digits_cnn, digits):
    model = copy.deepcopy(digits_cnn).double()
    x, y = digits[2][:64].double(), digits[3][:64]
    result = evaluate(model, [(x, y)], FP64_ATTACKS[name](), progress=False)
    assert 0 <= result["robust_accuracy"] < result["clean_accuracy"]
    direct = FP64_ATTACKS[name]()(model, (x, y))
    assert direct.inputs["image"].dtype == torch.float64
    assert float((direct.inputs["image"] - x).abs().amax()) <= 0.1 + 1e-12


def test_float64_trainer_with_robustness_evaluation(digits, tmp_path):
    module = DigitsModule()
    t = trainer(tmp_path, [RobustnessEvaluation(PGD(BOX, steps=2, seed=0))], max_epochs=1, precision="64-true",
                limit_train_batches=2)
    t.fit(module, digits_loader(digits, n=32), digits_loader(digits, n=32))
    assert all(p.dtype == torch.float64 for p in module.parameters())
    assert 0 <= float(t.callback_metrics["val/robust_acc"]) <= float(t.callback_metrics["val/clean_acc"])


# -- labels ----------------------------------------------------------------------------------------------
LABEL_ATTACKS = {
    "PGD": lambda: PGD(BOX, steps=2), "FGSM": lambda: FGSM(BOX), "APGD": lambda: APGD(BOX, steps=2),
    "APGD-T": lambda: APGDT(BOX, steps=2, n_target_classes=2), "Square": lambda: Square(BOX, n_queries=5),
    "FMN": lambda: FMN(BOX, steps=2),
}


@pytest.mark.parametrize("bad", [10, -1])
@pytest.mark.parametrize("name", sorted(LABEL_ATTACKS))
def test_out_of_range_labels_raise_the_library_error_from_every_entry_point(name, bad, digits_cnn, digits):
    x, y = digits[2][:8], digits[3][:8].clone()
    y[3] = bad
    target = (digits[3][:8] + 1) % 10
    attack = LABEL_ATTACKS[name]()
    low, high = min(bad, int(y.min())), max(bad, int(y.max()))
    message = rf"labels must lie in \[0, 9\] for a model with 10 outputs .* got values in \[{low}, {high}\]"
    with pytest.raises(LabelError, match=message):
        attack(digits_cnn, (x, y))
    with pytest.raises(LabelError, match=message):
        attack.generate(digits_cnn, (x, y), target_labels=target if attack.targeted else None)
    if attack.targeted:
        wrong = target.clone()
        wrong[0] = 10
        with pytest.raises(LabelError, match=r"target_labels must lie in \[0, 9\]"):
            attack.generate(digits_cnn, (x, digits[3][:8]), target_labels=wrong)
        with pytest.raises(LabelError, match=r"target_labels must lie in \[0, 9\]"):
            attack(digits_cnn, (x, digits[3][:8]), target_labels=wrong)

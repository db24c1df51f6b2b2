"""The rules every attack follows, enforced by the core (mmrobust/attacks/base.py)."""

import pytest
import torch
from torch import nn

from mmrobust import PGD, L2Ball, LinfBall
from mmrobust.attacks import APGD, APGDT
from mmrobust.adapters import TensorAdapter
from mmrobust.errors import NonFiniteError


def _attack(**kw):
    return PGD(LinfBall(0.1, lower=0, upper=1), steps=3, seed=0, **kw)


class RaisesOnCall(nn.Module):
    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return self.inner(x)


def _snapshot(model):
    return ([m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [p.detach().clone() for p in model.parameters()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()])


def _mixed_state(model):
    model.train()
    list(model.modules())[2].eval()          # a submodule the user froze in eval mode
    params = list(model.parameters())
    params[0].requires_grad_(False)          # a frozen layer
    params[-1].grad = torch.full_like(params[-1], 3.0)  # a pending gradient


def _assert_same(before, after):
    assert before[0] == after[0], "module modes changed"
    assert before[1] == after[1], "requires_grad flags changed"
    assert all(torch.equal(a, b) for a, b in zip(before[2], after[2])), "parameters changed"
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before[3], after[3])), ".grad changed"


def test_modes_flags_weights_and_grads_restored(digits, digits_cnn):
    import copy
    model = copy.deepcopy(digits_cnn)
    _mixed_state(model)
    before = _snapshot(model)
    _, _, xt, yt = digits
    _attack()(model, (xt[:32], yt[:32]))
    _assert_same(before, _snapshot(model))


def test_everything_restored_when_the_model_raises_mid_attack(digits, digits_cnn):
    import copy
    model = RaisesOnCall(copy.deepcopy(digits_cnn), n=3)
    _mixed_state(model)
    before = _snapshot(model)
    _, _, xt, yt = digits
    with pytest.raises(RuntimeError, match="boom"):
        _attack()(model, (xt[:8], yt[:8]))
    _assert_same(before, _snapshot(model))


def test_input_batch_is_never_modified(digits, digits_cnn):
    _, _, xt, yt = digits
    x, y = xt[:16].clone(), yt[:16].clone()
    batch = [x, y]
    res = _attack()(digits_cnn, batch)
    assert torch.equal(batch[0], xt[:16]) and torch.equal(batch[1], yt[:16])
    assert batch[0] is x and res.batch is not batch and isinstance(res.batch, list)
    assert not torch.equal(res.batch[0], x)


def test_works_under_no_grad_and_inference_mode(digits, digits_cnn):
    _, _, xt, yt = digits
    ref = _attack()(digits_cnn, (xt[:16], yt[:16])).robust
    with torch.no_grad():
        assert torch.equal(_attack()(digits_cnn, (xt[:16], yt[:16])).robust, ref)
    with torch.inference_mode():
        x, y = xt[:16].clone(), yt[:16].clone()  # inference tensors, as in Lightning's validation loop
        assert torch.equal(_attack()(digits_cnn, (x, y)).robust, ref)


def test_seeded_attacks_are_deterministic(digits, digits_cnn):
    _, _, xt, yt = digits
    a = _attack()(digits_cnn, (xt[:32], yt[:32]))
    b = _attack()(digits_cnn, (xt[:32], yt[:32]))
    assert torch.equal(a.inputs["image"], b.inputs["image"])


def test_dict_batches_keep_their_keys_and_extras(digits, digits_cnn):
    _, _, xt, yt = digits
    batch = {"image": xt[:8], "label": yt[:8], "id": torch.arange(8)}
    res = _attack(adapter=TensorAdapter("image", "label"))(digits_cnn, batch)
    assert set(res.batch) == {"image", "label", "id"} and torch.equal(res.batch["id"], batch["id"])
    gen = _attack().generate(digits_cnn, batch)  # keys inferred
    assert set(gen) == set(batch) and float((gen["image"] - batch["image"]).abs().max()) <= 0.1 + 1e-6


def test_labels_out_of_range_are_refused(digits, digits_cnn):
    _, _, xt, _ = digits
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        _attack()(digits_cnn, (xt[:4], torch.tensor([0, 1, 2, 10])))


def test_wrong_output_shape_is_refused(digits):
    _, _, xt, yt = digits
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Unflatten(1, (2, 5)))
    with pytest.raises(ValueError, match="logits of shape"):
        _attack()(model, (xt[:4], yt[:4]))


def test_empty_batch_and_integer_inputs_are_refused(digits, digits_cnn):
    _, _, xt, yt = digits
    with pytest.raises(ValueError, match="batch >= 1"):
        _attack()(digits_cnn, (xt[:0], yt[:0]))
    with pytest.raises(TypeError, match="floating-point"):
        _attack()(digits_cnn, ((xt[:4] * 16).long(), yt[:4]))


def test_non_finite_outputs_are_reported(digits):
    _, _, xt, yt = digits

    class Overflows(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x):
            z = self.lin(x.flatten(1))
            return z * torch.where(x.flatten(1).sum(1, keepdim=True) > 1e9, 1.0, float("inf"))

    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        _attack()(Overflows(), (xt[:4], yt[:4]))


def test_step_size_and_steps_are_validated():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        PGD(L2Ball(1.0), steps=0)
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        PGD(L2Ball(1.0), step_size=-1.0)
    with pytest.raises(TypeError, match="threat must be a ThreatModel"):
        PGD(0.3)


@pytest.mark.parametrize("restarts", [1, 2])
def test_early_stopping_changes_work_not_results(digits, digits_cnn, restarts):
    _, _, xt, yt = digits
    threat = LinfBall(0.1, lower=0, upper=1)
    full = PGD(threat, steps=10, restarts=restarts, seed=0, early_stop=False)(digits_cnn, (xt, yt))
    early = PGD(threat, steps=10, restarts=restarts, seed=0, early_stop=True)(digits_cnn, (xt, yt))
    # the same steps per example; only float effects of the smaller batches can flip a borderline sign
    assert int((full.robust != early.robust).sum()) <= 2
    both = full.robust & early.robust
    close = (full.inputs["image"][both] - early.inputs["image"][both]).flatten(1).abs().amax(1) < 1e-5
    assert close.float().mean() > 0.95
    assert bool((early.logits.argmax(1) != yt)[~early.robust & early.clean_correct].all())


@pytest.mark.parametrize("make", [
    lambda t: APGD(t, steps=10, seed=0),
    lambda t: APGD(t, steps=8, restarts=2, seed=0),
    lambda t: APGDT(t, steps=8, n_target_classes=3, seed=0),
], ids=["apgd-1-run", "apgd-2-restarts", "apgd-t-3-targets"])
def test_apgd_early_stopping_changes_work_not_results(digits, digits_cnn, make):
    """Units leave a run once adversarial, and later restarts / target classes run only on units still
    robust (the reference implementation does the latter); the other units' runs are unchanged."""
    _, _, xt, yt = digits
    threat = LinfBall(0.1, lower=0, upper=1)
    seen = []
    hook = digits_cnn.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        full = make(threat)(digits_cnn, (xt, yt))
        work_full, seen[:] = sum(seen), []
        attack = make(threat)
        attack.early_stop = True
        early = attack(digits_cnn, (xt, yt))
        work_early = sum(seen)
    finally:
        hook.remove()
    assert int((full.robust != early.robust).sum()) <= 2
    assert 0.1 < early.robust.float().mean() < 0.9  # neither run is trivial
    assert work_early < 0.85 * work_full
    broken = ~early.robust & early.clean_correct
    assert bool((early.logits.argmax(1) != yt)[broken].all())  # the returned points are adversarial
    assert bool((early.logits == digits_cnn(early.inputs["image"]).detach()).all() or
                torch.allclose(early.logits, digits_cnn(early.inputs["image"]).detach(), atol=1e-5))
    # units wrong on the clean input are not attacked: their returned point is the clean input
    wrong = ~early.clean_correct
    assert bool(wrong.any()) and float(early.size["image"][wrong].abs().max()) == 0.0
    assert (early.inputs["image"] - xt).abs().amax() <= 0.1 + 1e-6


class DetachesInput(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.detach())


@pytest.mark.parametrize("make", [lambda t: PGD(t, steps=2, seed=0), lambda t: APGD(t, steps=2, seed=0)])
def test_a_forward_that_cuts_the_input_gradient_is_named(digits, digits_cnn, make):
    x, y = digits[0][:4], digits[1][:4]
    with pytest.raises(RuntimeError, match="cuts the input's gradient"):
        make(LinfBall(0.1, lower=0, upper=1))(DetachesInput(digits_cnn), [x, y])


def test_out_of_box_input_is_named_as_the_user_passed_it():
    """A plain waveform tensor read by the tensor adapter is named by its place in the batch, not "image"."""
    from mmrobust.threats import SNRBall
    wave, y = torch.linspace(-1.5, 1.5, 64).repeat(2, 1), torch.zeros(2, dtype=torch.long)
    model = nn.Sequential(nn.Linear(64, 3))
    with pytest.raises(ValueError, match=r"the input batch\[0\] has values below") as err:
        PGD(SNRBall(30), steps=1)(model, [wave, y])
    assert "image" not in str(err.value).split(".")[0]

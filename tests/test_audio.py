"""Speech-audio modality: waveform adapter, dB budgets, PGD/universal/EOT in the waveform domain."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import train_classifier
from mmrobust.adapters import WaveformAdapter, infer_adapter
from mmrobust.attacks import EOT, PGD, UniversalPerturbation, eot_victim
from mmrobust.audio import M5, AddNoise, LogMelCNN, RandomReverb, RandomTimeShift, synth_digits, synthetic_rir
from mmrobust.threats import LinfBall, PeakDBBall, SNRBall, db_x, snr_db

LENGTH = 4000


def train(model, waves, labels, epochs, lr=3e-3, seed=0):
    return train_classifier(model, waves, labels, epochs=epochs, lr=lr, batch_size=32, seed=seed)


@pytest.fixture(scope="module")
def speech():
    """Synthetic spoken digits: (train waves, labels, lengths), (test waves, labels, lengths)."""
    return synth_digits(600, seed=0, length=LENGTH), synth_digits(120, seed=1, length=LENGTH)


@pytest.fixture(scope="module")
def m5(speech):
    (w, y, _), (wt, yt, _) = speech
    model = train(M5(width=16), w, y, epochs=5)
    with torch.no_grad():
        acc = (model(wt).argmax(1) == yt).float().mean().item()
    assert acc > 0.9, f"M5 trained badly on synthetic speech ({acc:.3f})"
    return model


def accuracy(model, w, y):
    with torch.no_grad():
        return (model(w).argmax(1) == y).float().mean().item()


# -- threat models ------------------------------------------------------------------------------------
@pytest.mark.parametrize("snr", [10.0, 30.0])
def test_snr_ball_projection_holds_snr_and_box(speech, snr):
    (w, _, _), _ = speech
    x = w[:16]
    threat = SNRBall(snr)
    delta = threat.project(0.5 * torch.randn_like(x), x)
    assert bool((snr_db(delta, x) >= snr - 1e-3).all())
    assert bool(((x + delta).abs() <= 1 + 1e-6).all())
    # the budget is an L2 radius of ||x|| 10^(-snr/20)
    assert torch.allclose(threat.radius(x), x.norm(dim=1) * 10 ** (-snr / 20))
    assert threat.with_level(20.0).snr_db == 20.0 and threat.snr_db == snr


def test_peak_db_ball_is_carlini_wagner_db_x(speech):
    (w, _, _), _ = speech
    x = w[:16]
    threat = PeakDBBall(-30.0)
    delta = threat.project(torch.randn_like(x), x)
    measured = db_x(delta, x)
    assert bool((measured <= -30.0 + 1e-3).all()) and bool((measured > -30.5).all())
    assert torch.allclose(threat.radius(x), x.abs().amax(1) * 10 ** (-30 / 20))
    with pytest.raises(ValueError, match="db"):
        PeakDBBall(float("nan"))
    with pytest.raises(TypeError, match="snr_db"):
        SNRBall("20")


# -- adapter ------------------------------------------------------------------------------------------
def test_waveform_adapter_refuses_int_audio_and_out_of_range(m5):
    y = torch.zeros(2, dtype=torch.long)
    attack = PGD(SNRBall(30), steps=1, adapter=WaveformAdapter())
    with pytest.raises(TypeError, match=r"float\(\) / 32768"):
        attack(m5, (torch.zeros(2, LENGTH, dtype=torch.int16), y))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        attack(m5, (torch.full((2, LENGTH), 1.5), y))
    with pytest.raises(ValueError, match="lengths must lie"):
        attack(m5, (torch.zeros(2, LENGTH), y, torch.tensor([10, LENGTH + 1])))


def test_dict_batches_are_recognised_and_tuples_are_not_ambiguous():
    batch = {"audio": torch.zeros(2, 100), "label": torch.zeros(2, dtype=torch.long), "lengths": torch.tensor([50, 100])}
    adapter = infer_adapter(batch)
    assert isinstance(adapter, WaveformAdapter)
    victim = adapter.victim(nn.Identity(), batch)
    assert victim.masks["audio"].shape == (2, 100)
    assert victim.masks["audio"][0, :50].all() and not victim.masks["audio"][0, 50:].any()


# -- attacks in the waveform domain -------------------------------------------------------------------
def test_pgd_snr_lowers_accuracy_keeps_budget_padding_and_box(m5, speech):
    _, (wt, yt, lt) = speech
    x, y, lengths = wt[:64], yt[:64], lt[:64]
    x_before = x.clone()
    attack = PGD(SNRBall(20.0), steps=10, adapter=WaveformAdapter(sample_rate=8000), seed=0)
    res = attack(m5, (x, y, lengths))
    assert torch.equal(x, x_before)  # the user's tensor is untouched
    clean, adv = res.clean_correct.float().mean().item(), res.adv_correct.float().mean().item()
    assert clean > 0.85 and adv < clean - 0.4, (clean, adv)
    delta = res.inputs["audio"] - x
    assert bool((res.extras["audio/snr_db"] >= 20.0 - 1e-3).all())
    assert torch.allclose(res.extras["audio/snr_db"], snr_db(delta, x))
    assert "audio/db_x" in res.extras and res.extras["sample_rate"] == 8000
    pad = torch.arange(LENGTH)[None] >= lengths[:, None]
    assert bool((delta[pad] == 0).all()), "padding was perturbed"
    assert bool((res.inputs["audio"].abs() <= 1 + 1e-6).all())
    assert isinstance(res.batch, tuple) and torch.equal(res.batch[2], lengths)


def test_pgd_differentiates_through_a_mel_front_end(speech):
    (w, y, _), (wt, yt, lt) = speech
    model = train(LogMelCNN(width=8), w[:300], y[:300], epochs=6, lr=5e-3)
    batch = {"audio": wt[:48], "label": yt[:48], "lengths": lt[:48]}
    res = PGD(PeakDBBall(-20.0), steps=8, seed=0)(model, batch)
    assert res.loss.mean() > nn.functional.cross_entropy(res.clean_logits, res.target) + 1.0
    assert res.robust.float().mean() < 0.5 * res.clean_correct.float().mean()
    assert bool((res.extras["audio/db_x"] <= -20.0 + 1e-3).all())


def test_universal_perturbation_is_shared_lowers_accuracy_and_round_trips(m5, speech):
    (w, y, lt), (wt, yt, ltt) = speech
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(w[:256], y[:256]), batch_size=32)
    attack = UniversalPerturbation(LinfBall(0.05), adapter=WaveformAdapter(), step_size=0.1, seed=0)
    delta = attack.fit(m5, loader, epochs=2)
    assert delta.shape == (LENGTH,) and delta.abs().max() <= 0.05 + 1e-6
    x = wt[:64] * 0.9  # keep away from the box so the delta is added unclipped
    res = attack(m5, (x, yt[:64]))
    added = res.inputs["audio"] - x
    assert torch.allclose(added, added[:1].expand_as(added), atol=1e-6), "delta differs across the batch"
    assert res.adv_correct.float().mean() < accuracy(m5, x, yt[:64]) - 0.3
    # lengths: padding stays clean, the delta is cropped to the batch length
    short = attack(m5, (wt[:8, :3000], yt[:8], torch.full((8,), 2000)))
    assert bool((short.inputs["audio"][:, 2000:] == wt[:8, 2000:3000]).all())
    again = UniversalPerturbation(LinfBall(0.03), adapter=WaveformAdapter())
    again.load_state_dict(attack.state_dict())
    assert torch.equal(again.delta, attack.delta)
    with pytest.raises(RuntimeError, match="fit"):
        UniversalPerturbation(LinfBall(0.03), adapter=WaveformAdapter())(m5, (x, yt[:64]))


def test_universal_peak_db_budget_is_relative_to_reference_level(m5, speech):
    (w, y, _), _ = speech
    loader = [(w[:32], y[:32])]
    attack = UniversalPerturbation(PeakDBBall(-20.0), reference_level=0.5, adapter=WaveformAdapter(), step_size=0.5,
                                   seed=0)
    delta = attack.fit(m5, loader, epochs=3)
    peak = 20 * math.log10(delta.abs().max().item() / 0.5)
    assert -21.0 < peak <= -20.0 + 1e-3


# -- EOT ----------------------------------------------------------------------------------------------
def test_eot_gradient_is_the_average_over_sampled_transforms(m5, speech):
    _, (wt, yt, _) = speech
    x, y = wt[:4].clone(), yt[:4]
    shift, noise = RandomTimeShift(200), AddNoise(20.0)

    def transform(v, g):
        return noise(shift(v, g), g)

    victim = WaveformAdapter().victim(m5, (x, y))
    samples = 3
    leaf = x.clone().requires_grad_(True)
    wrapped = eot_victim(victim, transform, samples, torch.Generator().manual_seed(5))
    wrapped.forward({"audio": leaf}).gather(1, y[:, None]).sum().backward()
    g = torch.Generator().manual_seed(5)
    hand = torch.zeros_like(x)
    for _ in range(samples):
        leaf2 = x.clone().requires_grad_(True)
        m5(transform(leaf2, g)).log_softmax(1).gather(1, y[:, None]).sum().backward()
        hand += leaf2.grad / samples
    assert torch.allclose(leaf.grad, hand, atol=1e-6)
    # a single sample differs from the average (the transforms really vary)
    assert not torch.allclose(leaf2.grad / samples, hand, atol=1e-6)


def test_eot_pgd_survives_random_shifts_where_plain_pgd_does_not(m5, speech):
    _, (wt, yt, _) = speech
    x, y = wt[:32], yt[:32]
    threat = SNRBall(10.0)
    eot = EOT(PGD(threat, steps=10, seed=0, adapter=WaveformAdapter()), [RandomTimeShift(400)], samples=4, eval_samples=8, seed=1)
    res = eot(m5, (x, y))
    plain = PGD(threat, steps=10, seed=0, adapter=WaveformAdapter())(m5, (x, y))
    # plain PGD's examples, played back with fresh random delays
    victim = WaveformAdapter().victim(m5, (x, y))
    plain_acc = (eot.transformed_predictions(victim, plain.inputs, 8) == y).float().mean().item()
    eot_acc = res.extras["eot/transformed_accuracy"].mean().item()
    clean_acc = res.extras["eot/clean_transformed_accuracy"].mean().item()
    assert clean_acc > 0.8
    assert eot_acc < plain_acc - 0.25 and eot_acc < 0.3, (clean_acc, plain_acc, eot_acc)
    assert torch.allclose(res.extras["eot/transformed_success"], 1 - res.extras["eot/transformed_accuracy"])
    assert bool((res.extras["audio/snr_db"] >= 10.0 - 1e-3).all())
    assert res.attack.startswith("EOT(PGD(SNRBall")


# -- transforms ---------------------------------------------------------------------------------------
def test_transforms_are_seeded_and_rir_decays():
    x = torch.randn(3, 1000) * 0.1
    for t in (RandomTimeShift(50), AddNoise((10, 20)), RandomReverb(8000, rir_seconds=0.05)):
        a = t(x, torch.Generator().manual_seed(0))
        b = t(x, torch.Generator().manual_seed(0))
        assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    h = synthetic_rir(torch.tensor([0.2]), 8000, 2000, torch.Generator().manual_seed(0))
    early, late = h[0, 1:400].pow(2).sum(), h[0, 1600:].pow(2).sum()
    assert late < 1e-3 * early  # 60 dB per 0.2 s
    shifted = RandomTimeShift(10, circular=True)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(shifted.norm(dim=1), x.norm(dim=1))


def test_apgd_and_fmn_work_unchanged_under_audio_budgets(m5, speech):
    from mmrobust.attacks.apgd import APGD
    from mmrobust.attacks.fmn import FMN

    _, (wt, yt, lt) = speech
    batch = {"audio": wt[:32], "label": yt[:32], "lengths": lt[:32]}
    pad = torch.arange(LENGTH)[None] >= lt[:32, None]
    for early_stop in (False, True):  # early stopping works on per-signal budgets and masks of sub-batches
        res = APGD(PeakDBBall(-25.0), steps=10, seed=0, early_stop=early_stop)(m5, batch)
        assert res.robust.float().mean() < res.clean_correct.float().mean() - 0.4
        assert bool((res.extras["audio/db_x"] <= -25.0 + 1e-3).all())
        assert bool(((res.inputs["audio"] - wt[:32])[pad] == 0).all())
    fmn = FMN(SNRBall(10.0), steps=20)(m5, batch)
    found = torch.isfinite(fmn.size["audio"])
    assert found.float().mean() > 0.8
    # minimal L2 perturbations, reported as SNRs: most fool the model at a far higher SNR than 10 dB
    assert fmn.extras["audio/snr_db"][found].median() > 20.0
    assert bool(((fmn.inputs["audio"] - wt[:32])[pad] == 0).all())

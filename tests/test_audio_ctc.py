"""Targeted CTC attack (Carlini & Wagner 2018) on a tiny recogniser of synthetic tone "speech"."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmrobust.attacks.ctc import CTCTargetedAttack, greedy_decode
from mmrobust.threats import PeakDBBall, SNRBall

SR, SEG, GAP, LENGTH = 8000, 640, 320, 3200
FREQS = [500.0, 900.0, 1400.0, 2000.0]  # symbol k (1..4) is a tone at FREQS[k-1]; 0 is the CTC blank


def tone_phrases(n, seed):
    """``n`` phrases of 2-3 symbols: waves (n, LENGTH), label lists, lengths."""
    g = torch.Generator().manual_seed(seed)
    waves, labels, lengths = torch.zeros(n, LENGTH), [], torch.zeros(n, dtype=torch.long)
    t = torch.arange(SEG) / SR
    env = torch.sin(math.pi * torch.arange(SEG) / SEG)
    for i in range(n):
        k = int(torch.randint(2, 4, (1,), generator=g))
        seq = torch.randint(1, 5, (k,), generator=g).tolist()
        pos = int(torch.randint(0, GAP, (1,), generator=g))
        for s in seq:
            amp = 0.3 + 0.5 * float(torch.rand((), generator=g))
            waves[i, pos:pos + SEG] = amp * env * torch.sin(2 * math.pi * FREQS[s - 1] * t)
            pos += SEG + GAP
        waves[i, :pos] += 0.01 * torch.randn(pos, generator=g)
        labels.append(seq)
        lengths[i] = min(pos, LENGTH)
    return waves.clamp(-1, 1), labels, lengths


class TinyCTC(nn.Module):
    """Log-mel front end (inside the model, so attacks act on waveforms) + GRU, returning (B, frames, 5)
    log-probabilities."""

    def __init__(self):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(SR, n_fft=256, hop_length=64, n_mels=32)
        self.rnn = nn.GRU(32, 32, batch_first=True, bidirectional=True)
        self.out = nn.Linear(64, len(FREQS) + 1)

    def forward(self, wave):
        feats = torch.log(self.mel(wave) + 1e-4).transpose(1, 2) / 5
        return self.out(self.rnn(feats)[0]).log_softmax(-1)


@pytest.fixture(scope="module")
def ctc_model():
    torch.manual_seed(0)
    waves, labels, _ = tone_phrases(256, seed=0)
    model = TinyCTC()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    test, test_labels, _ = tone_phrases(32, seed=1)
    for epoch in range(40):
        model.train()
        for i in range(0, 256, 32):
            lp = model(waves[i:i + 32])
            seqs = labels[i:i + 32]
            tgt = torch.tensor([c for s in seqs for c in s])
            loss = nn.functional.ctc_loss(lp.transpose(0, 1), tgt, torch.full((len(seqs),), lp.shape[1]),
                                          torch.tensor([len(s) for s in seqs]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = sum(d == s for d, s in zip(greedy_decode(model(test)), test_labels)) / 32
        if acc > 0.9:
            break
    assert acc > 0.8, f"tiny CTC model trained badly ({acc:.2f} phrase accuracy)"
    return model


@pytest.mark.slow
def test_ctc_targeted_attack_reaches_its_phrase_within_peak_db(ctc_model):
    waves, labels, lengths = tone_phrases(8, seed=2)
    targets = [[4, 3, 2, 1][: len(s) + 1] if s != [4, 3, 2, 1][: len(s) + 1] else [1, 1, 2] for s in labels]
    attack = CTCTargetedAttack(PeakDBBall(-15.0), steps=200, step_size=0.02)
    res = attack(ctc_model, waves, targets, lengths=lengths)
    assert res.success.float().mean() >= 0.75, (res.decoded, targets)
    assert bool((res.extras["wave/db_x"] <= -15.0 + 1e-3).all())
    pad = torch.arange(LENGTH)[None] >= lengths[:, None]
    assert bool(((res.wave - waves)[pad] == 0).all())
    assert all(d == s for d, s, ok in zip(res.decoded, targets, res.success.tolist()) if ok)
    assert res.clean_decoded != res.decoded


def test_ctc_attack_checks_its_inputs():
    torch.manual_seed(0)
    ctc_model = TinyCTC().eval()
    waves, labels, _ = tone_phrases(2, seed=3)
    attack = CTCTargetedAttack(SNRBall(20.0), steps=2)
    with pytest.raises(ValueError, match="one label sequence per example"):
        attack(ctc_model, waves, [[1]])
    with pytest.raises(TypeError, match="float"):
        attack(ctc_model, (waves * 30000).short(), labels)
    with pytest.raises(ValueError, match="layout"):
        CTCTargetedAttack(SNRBall(20.0), layout="BCT")
    res = attack(ctc_model, waves, labels)
    assert res.wave.shape == waves.shape and bool((res.extras["wave/snr_db"] >= 20.0 - 1e-3).all())
    assert len(res.decoded) == 2 and res.steps_to_success.shape == (2,)


def test_ctc_masking_options_are_checked():
    from mmrobust.attacks import MaskingPenalty

    with pytest.raises(TypeError, match="MaskingPenalty"):
        CTCTargetedAttack(SNRBall(20.0), masking=0.05)
    with pytest.raises(ValueError, match="not both"):
        CTCTargetedAttack(SNRBall(20.0), masking=MaskingPenalty(SR), shrink=0.8)
    torch.manual_seed(0)
    waves, labels, _ = tone_phrases(2, seed=3)
    with pytest.raises(ValueError, match="init must have the shape"):
        CTCTargetedAttack(SNRBall(20.0), steps=1)(TinyCTC().eval(), waves, labels, init=waves[:1])



@pytest.mark.slow
def test_ctc_second_stage_hides_the_perturbation_under_the_masking_threshold(ctc_model):
    from mmrobust.attacks import MaskingPenalty
    from mmrobust.threats import masking_threshold

    waves, labels, lengths = tone_phrases(4, seed=2)
    targets = [[4, 3, 2, 1][: len(s) + 1] if s != [4, 3, 2, 1][: len(s) + 1] else [1, 1, 2] for s in labels]
    first = CTCTargetedAttack(PeakDBBall(-15.0), steps=200, step_size=0.02)(ctc_model, waves, targets, lengths=lengths)
    masking = MaskingPenalty(SR, n_fft=256, up_every=10, down_every=10)
    second = CTCTargetedAttack(PeakDBBall(-15.0), steps=150, step_size=0.005, masking=masking)(
        ctc_model, waves, targets, lengths=lengths, init=first.wave - waves)
    assert bool((second.success | ~first.success).all())  # a phrase reached stays reached
    assert bool((second.extras["wave/db_x"] <= -15.0 + 1e-3).all())
    pad = torch.arange(LENGTH)[None] >= lengths[:, None]
    assert bool(((second.wave - waves)[pad] == 0).all())
    thr = masking_threshold(waves, SR, n_fft=256)
    ok = first.success
    assert bool((thr.penalty(second.wave - waves)[ok] < thr.penalty(first.wave - waves)[ok]).all())
    assert bool((second.extras["wave/frames_above"][ok] <= thr.theta_db.shape[-1]).all())


def test_ctc_eot_over_reverberation_stays_in_budget_and_repeats():
    from mmrobust.audio import RandomReverb

    torch.manual_seed(0)
    model = TinyCTC().eval()
    waves, labels, lengths = tone_phrases(3, seed=4)
    kept = waves.clone()
    targets = [[1, 2], [3, 4, 1], [2, 2]]
    attack = CTCTargetedAttack(PeakDBBall(-20.0), steps=3, transforms=RandomReverb(SR, rt60=(0.2, 0.5)),
                               samples=2, seed=1)
    res = attack(model, waves, targets, lengths=lengths)
    assert torch.equal(waves, kept) and attack.seed == 1
    assert bool((res.extras["wave/db_x"] <= -20.0 + 1e-3).all())
    pad = torch.arange(LENGTH)[None] >= lengths[:, None]
    assert bool(((res.wave - waves)[pad] == 0).all()) and bool((res.wave.abs() <= 1).all())
    share = res.extras["eot/success_share"]
    assert share.shape == (3,) and bool(((share >= 0) & (share <= 1)).all())
    again = attack.reseed()(model, waves, targets, lengths=lengths)
    assert torch.equal(res.wave, again.wave)  # reseed() restarts the transforms' generator (as Attack.reseed)
    assert "EOT samples=2" in attack.describe()
    with pytest.raises(ValueError, match="cannot be combined"):
        CTCTargetedAttack(PeakDBBall(-20.0), transforms=RandomReverb(SR), shrink=0.8)


@pytest.mark.slow
def test_ctc_eot_attack_survives_fresh_room_responses_better_than_the_plain_one(ctc_model):
    from mmrobust.audio import RandomReverb

    waves, labels, lengths = tone_phrases(6, seed=2)
    targets = [[4, 3, 2, 1][: len(s) + 1] if s != [4, 3, 2, 1][: len(s) + 1] else [1, 1, 2] for s in labels]
    room = RandomReverb(SR, rt60=(0.2, 0.4))
    plain = CTCTargetedAttack(PeakDBBall(-15.0), steps=150)(ctc_model, waves, targets, lengths=lengths)
    eot = CTCTargetedAttack(PeakDBBall(-15.0), steps=150, transforms=room, samples=4)(
        ctc_model, waves, targets, lengths=lengths)
    assert bool((eot.extras["wave/db_x"] <= -15.0 + 1e-3).all())

    def over_the_air(adv):
        g = torch.Generator().manual_seed(123)  # responses the attack never drew
        with torch.no_grad():
            return sum(sum(d == t for d, t in zip(greedy_decode(ctc_model(room(adv, g))), targets))
                       for _ in range(8)) / (8 * len(targets))

    assert over_the_air(eot.wave) > over_the_air(plain.wave)


class PaddingEmitter(nn.Module):
    """10 frames of 40 samples, 5 classes; an all-zero frame (padding) emits class 3. With ``frame_lengths``
    (as DigitCTC has) the model says which frames are valid."""

    def __init__(self, with_frame_lengths: bool):
        super().__init__()
        torch.manual_seed(0)
        self.frames = nn.Sequential(nn.Unflatten(1, (10, 40)), nn.Linear(40, 5))
        with torch.no_grad():
            self.frames[1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
        if with_frame_lengths:
            self.frame_lengths = lambda lengths: torch.div(lengths, 40, rounding_mode="floor")

    def forward(self, wave):
        return self.frames(wave)


@pytest.mark.parametrize("with_frame_lengths", [True, False])
def test_padding_frames_are_not_decoded_or_scored(with_frame_lengths):
    model = PaddingEmitter(with_frame_lengths).eval()
    wave = torch.zeros(2, 400)
    wave[:, :200] = 0.3 * torch.randn(2, 200, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([200, 200])  # 5 valid frames, 5 padding frames that emit 3 and cannot be changed
    attack = CTCTargetedAttack(PeakDBBall(0.0), steps=200, step_size=0.05)
    res = attack(model, wave, [[1], [2, 4]], lengths=lengths)
    valid = greedy_decode(model(res.wave).detach()[:, :5])
    assert res.decoded == valid and res.success.tolist() == [True, True] and valid == [[1], [2, 4]]
    assert res.clean_decoded == greedy_decode(model(wave)[:, :5].detach())
    assert torch.equal(res.wave[:, 200:], wave[:, 200:])
    assert greedy_decode(model(res.wave).detach())[0][-1] == 3  # what decoding every frame would have heard
    # without lengths every frame counts: the padding's 3 is part of the transcript
    plain = attack(model, wave, [[1, 3], [2, 4, 3]])
    assert plain.decoded == greedy_decode(model(plain.wave).detach())

"""Red-team probes of waveform attacks on padded batches (different lengths in one batch).

The SNR budget is measured independently here from the returned waveforms:
``20 log10(||x|| / ||x_adv - x||)`` per example.
"""

import torch
from torch import nn

from mmrobust.adapters import WaveformAdapter
from mmrobust.attacks import APGD, FGSM, PGD
from mmrobust.threats import L1Ball, SNRBall


class _Pool(nn.Module):
    """Reads every sample, padding included: its input gradient is non-zero in the padding."""

    def __init__(self, length: int):
        super().__init__()
        self.lin = nn.Linear(length, 4)

    def forward(self, wave):
        return self.lin(torch.tanh(3 * wave))


def _padded_batch(length=2000):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([length, length * 3 // 4, length // 4, length // 10])
    mask = (torch.arange(length)[None] < lengths[:, None]).float()
    wave = 0.2 * torch.randn(4, length, generator=g).clamp(-3, 3) / 3 * mask
    torch.manual_seed(0)
    model = _Pool(length)
    with torch.no_grad():
        y = model(wave).argmax(1)
    return model, wave, y, lengths, mask


def _snr(adv, x):
    d = (adv.double() - x.double()).flatten(1)
    return 20 * torch.log10(x.double().flatten(1).norm(dim=1) / d.norm(dim=1))


def test_fgsm_snr_step_uses_the_whole_budget_on_short_padded_clips():
    # the L2 step was normalised over the gradient of the padding too, then masked: a clip of 1/10 of the
    # padded length got ~27 dB of noise under SNRBall(20) (a 2.4x shorter step than the budget allows)
    model, wave, y, lengths, mask = _padded_batch()
    result = FGSM(SNRBall(20), adapter=WaveformAdapter())(model, (wave, y, lengths))
    adv = result.inputs["audio"]
    snr = _snr(adv, wave)
    assert bool((snr >= 20 - 1e-4).all()), snr           # inside the budget
    assert bool((snr <= 20 + 0.05).all()), snr           # and the step reaches its boundary (no box is active)
    assert bool(((adv - wave) * (1 - mask) == 0).all())  # padding untouched
    assert torch.allclose(result.extras["audio/snr_db"].double(), snr, atol=1e-3)


def test_pgd_and_apgd_reach_the_snr_boundary_on_padded_clips():
    model, wave, y, lengths, mask = _padded_batch()
    for attack in (PGD(SNRBall(20), steps=3, seed=0, adapter=WaveformAdapter()),
                   APGD(SNRBall(20), steps=3, seed=0, adapter=WaveformAdapter())):
        # a linear-ish model whose loss grows along the gradient: the best point lies on the sphere
        adv = attack(model, (wave, y, lengths)).inputs["audio"]
        snr = _snr(adv, wave)
        assert bool((snr >= 20 - 1e-4).all()), (attack.name, snr)
        assert bool((snr <= 20.5).all()), (attack.name, snr)
        assert bool(((adv - wave) * (1 - mask) == 0).all())


def test_l1_step_spends_its_mass_on_samples_that_may_change():
    # the sparse L1 step picked its top-k coordinates among padding samples too, which the mask then zeroed
    model, wave, y, lengths, mask = _padded_batch()
    threat = L1Ball(2.0, lower=-1, upper=1)
    adv = FGSM(threat, adapter=WaveformAdapter())(model, (wave, y, lengths)).inputs["audio"]
    l1 = (adv - wave).abs().sum(1)
    assert bool((l1 <= 2.0 + 1e-4).all()), l1
    assert bool((l1 >= 2.0 - 1e-3).all()), l1


def test_ctc_attack_step_uses_the_whole_snr_budget_on_padded_clips():
    # CTCTargetedAttack's Adam direction was ~1 on every padding sample with any gradient; the L2 step normalised
    # over it, then masked, lost the padding's share: one step of the full radius gave 30 + 5.2 dB on a clip of
    # 3/10 of the padded length
    from mmrobust.attacks import CTCTargetedAttack

    torch.manual_seed(0)
    class Recogniser(nn.Module):  # 10 frames, 5 classes; every frame also reads the whole clip (as a
        def __init__(self):       # global normalisation or a wide receptive field does), padding included
            super().__init__()
            self.frame, self.whole = nn.Linear(200, 5), nn.Linear(2000, 5)

        def forward(self, wave):
            return self.frame(wave.reshape(-1, 10, 200)) + self.whole(torch.tanh(3 * wave))[:, None]

    model = Recogniser().eval()
    length = 2000
    lengths = torch.tensor([length, 3 * length // 10])   # 10 and 3 frames
    mask = (torch.arange(length)[None] < lengths[:, None]).float()
    wave = 0.2 * torch.randn(2, length, generator=torch.Generator().manual_seed(1)).clamp(-3, 3) / 3 * mask
    attack = CTCTargetedAttack(SNRBall(30), steps=1, step_size=1.0)
    result = attack(model, wave, [[1, 2, 3], [4, 1, 2]], lengths=lengths)
    snr = _snr(result.wave, wave)
    assert not bool(result.success.any())
    assert bool(((result.wave - wave) * (1 - mask) == 0).all())
    assert bool((snr >= 30 - 1e-4).all()) and bool((snr <= 30 + 0.05).all()), snr

"""Targeted attacks on CTC speech recognisers (Carlini & Wagner 2018)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters.audio import check_waveform, length_mask
from ..errors import NonFiniteError, check_choice, check_fraction, check_int, check_positive
from ..utils import SeededStream
from ..threats.base import ThreatModel
from .base import attack_mode, normal_tensor

Targets = Union[Tensor, Sequence[Sequence[int]]]


def greedy_decode(log_probs: Tensor, blank: int = 0, lengths: Optional[Tensor] = None) -> List[List[int]]:
    """Best-path CTC decoding of ``(B, T, C)`` scores: argmax per frame, merge repeats, drop blanks."""
    best = log_probs.argmax(-1).tolist()
    out = []
    for b, seq in enumerate(best):
        if lengths is not None:
            seq = seq[:int(lengths[b])]
        decoded, prev = [], None
        for s in seq:
            if s != prev and s != blank:
                decoded.append(s)
            prev = s
        out.append(decoded)
    return out


def _pack_targets(targets: Targets, batch: int, device) -> Tuple[Tensor, Tensor, List[List[int]]]:
    if isinstance(targets, Tensor):
        raise TypeError("give targets as a list of label sequences (one list of ints per example)")
    seqs = [list(map(int, t)) for t in targets]
    if len(seqs) != batch:
        raise ValueError(f"targets must hold one label sequence per example ({batch}), got {len(seqs)}")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("every target sequence must be non-empty")
    flat = torch.tensor([c for s in seqs for c in s], dtype=torch.long, device=device)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=device)
    return flat, lengths, seqs


def _check_targets(seqs: List[List[int]], frames: Tensor, classes: int, blank: int) -> None:
    """Labels the model can emit (``F.ctc_loss`` reads out of range, and a negative label corrupts memory), and
    phrases that fit the frames: CTC needs a frame per label plus a blank between repeated labels."""
    if not 0 <= blank < classes:
        raise ValueError(f"blank must be a class index in [0, {classes - 1}] (the model scores {classes} classes), "
                         f"got {blank}")
    for i, s in enumerate(seqs):
        bad = [c for c in s if not 0 <= c < classes or c == blank]
        if bad:
            raise ValueError(f"targets[{i}] holds label {bad[0]}: target labels must lie in [0, {classes - 1}] and "
                             f"differ from the blank ({blank}); the model scores {classes} classes")
        need = len(s) + sum(a == b for a, b in zip(s, s[1:]))
        if need > int(frames[i]):
            raise ValueError(f"targets[{i}] needs {need} output frames (one per label and a blank between repeats), "
                             f"the model gives {int(frames[i])}; CTC cannot emit it (shorten the phrase)")


@dataclass
class CTCAttackResult:
    """Result of a targeted CTC attack.

    Attributes:
        wave: perturbed waveforms (same shape as the input).
        success: per example, greedy decoding equals the target phrase.
        decoded: greedy transcriptions of the perturbed waveforms; ``clean_decoded`` of the clean ones.
        loss: per example CTC loss towards the target at the returned point.
        size: per example size in the threat model's measure; ``extras`` holds ``snr_db``/``db_x`` for audio threats.
        steps_to_success: first step at which each example decoded to the target (-1: never).
    """

    wave: Tensor
    success: Tensor
    decoded: List[List[int]]
    clean_decoded: List[List[int]]
    loss: Tensor
    size: Tensor
    steps_to_success: Tensor
    attack: str = ""
    extras: Dict[str, Any] = field(default_factory=dict)


class CTCTargetedAttack(SeededStream):
    """Targeted audio adversarial examples against a CTC recogniser (Carlini & Wagner 2018, "Audio
    Adversarial Examples: Targeted Attacks on Speech-to-Text", https://arxiv.org/abs/1801.01944, Sec. 4):

    .. math:: \\min_{\\delta}\\ \\ell_{\\mathrm{CTC}}(f(x + \\delta), t)\\quad \\text{s.t.}\\ \\delta \\in \\Delta(x)

    where :math:`\\Delta(x)` is any threat model (C&W use :math:`\\mathrm{dB}_x(\\delta) \\le \\tau`, i.e.
    :class:`~mmrobust.threats.PeakDBBall`; :class:`~mmrobust.threats.SNRBall` works too). Each step feeds
    the CTC gradient through Adam's moment estimates (as C&W optimise with Adam), takes the threat
    model's steepest-ascent step along the Adam direction with length ``step_size`` times the radius,
    and projects. Success is C&W's criterion: the greedy (best-path) decoding equals the target.
    With ``shrink`` < 1 the budget of an example is multiplied by ``shrink`` each time it succeeds (C&W's
    reduction of :math:`\\tau`), returning the quietest success found.

    The model maps a waveform batch ``(B, T)`` (or ``(B, C, T)``) to CTC log-probabilities, either
    ``(B, frames, classes)`` (``layout="BTC"``, default) or ``(frames, B, classes)`` (``layout="TBC"``, the
    ``torch.nn.CTCLoss`` convention), optionally as a tuple ``(log_probs, frame_lengths)``. Raw scores are
    log-softmaxed. ``blank`` is the blank index.

    Only valid frames are decoded and scored: with ``lengths`` (valid samples per example of a padded
    batch) and a model that returns no frame lengths, the valid frames are ``model.frame_lengths(lengths)``
    when the model has that method (as :class:`~mmrobust.audio.recogniser.DigitCTC` has), otherwise
    ``ceil(frames * lengths / T)``. Frames over the padding never count towards the target (a recogniser
    that transcribes only an utterance's own frames would not hear them), and the CTC loss ignores them.

    With ``masking`` (a :class:`~mmrobust.attacks.imperceptible.MaskingPenalty`) it is Qin et al.'s second
    stage (https://arxiv.org/abs/1903.10346, Sec. 4): the loss is :math:`\\ell_{CTC} + \\alpha\\,\\ell_\\theta`
    with the masking-threshold penalty and its adaptive per-example weight, and among the successful
    iterates the one with the smallest penalty is returned; ``extras`` then also hold ``frames_above``
    and ``excess_db``. Give a perturbation that already succeeds as ``init`` (the first stage, e.g. this
    attack's result in a :class:`~mmrobust.threats.PeakDBBall`), as the paper does.

    With ``transforms`` (a module ``forward(x, generator)`` or a sequence of them, e.g.
    :class:`~mmrobust.audio.transforms.RandomReverb` for playback in a room) it is Expectation over
    Transformation (Athalye et al. 2018, https://arxiv.org/abs/1707.07397, Eq. 1; over the air as in Qin et
    al. 2019, Sec. 5): every step minimises the mean CTC loss over ``samples`` fresh draws of the transform
    applied to :math:`x + \\delta`, drawn as every seeded attack draws (:meth:`~mmrobust.attacks.Attack.generator`):
    from a generator created from ``seed`` on the first call and continued by later calls (``seed=None``: the
    global generator); :meth:`reseed` restarts it, so a call after ``reseed()`` repeats the first. The attack runs all ``steps`` (no early stop) and returns, per example,
    the latest iterate whose share of the step's draws decoded to the target was highest; ``extras``
    hold that share (``eot/success_share``). ``success`` stays C&W's criterion on the untransformed input;
    measure success over the air under fresh transforms that the attack did not see.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mmrobust.attacks import CTCTargetedAttack
        >>> from mmrobust.threats import LinfBall
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Unflatten(1, (10, 40)), nn.Linear(40, 5)).eval()  # 10 frames, 5 classes
        >>> wave = 0.1 * torch.randn(2, 400)
        >>> attack = CTCTargetedAttack(LinfBall(0.5, lower=-1, upper=1), steps=100, step_size=0.05)
        >>> result = attack(model, wave, [[3, 1], [3]])  # one target label sequence per example
        >>> result.success, result.decoded, bool((result.size <= 0.5 + 1e-6).all())
        (tensor([True, True]), [[3, 1], [3]], True)
    """

    def __init__(self, threat: ThreatModel, *, steps: int = 300, step_size: float = 0.02, blank: int = 0,
                 layout: str = "BTC", shrink: Optional[float] = None, betas: Tuple[float, float] = (0.9, 0.999),
                 masking=None, transforms=None, samples: int = 4, seed: Optional[int] = 0):
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        self.threat = threat
        self.steps = check_int("steps", steps, 1)
        self.step_size = check_positive("step_size", step_size)
        self.blank = check_int("blank", blank, 0)
        self.layout = check_choice("layout", layout, {"BTC", "TBC"})
        self.shrink = None if shrink is None else check_fraction("shrink", shrink, open_low=True, open_high=True)
        self.betas = (check_fraction("betas[0]", betas[0], open_high=True),
                      check_fraction("betas[1]", betas[1], open_high=True))
        from .imperceptible import MaskingPenalty

        if masking is not None and not isinstance(masking, MaskingPenalty):
            raise TypeError(f"masking must be a MaskingPenalty(sample_rate, ...) or None, got {type(masking).__name__}")
        if masking is not None and shrink is not None:
            raise ValueError("give either shrink (C&W's budget reduction) or masking (Qin et al.'s penalty), not both")
        self.masking = masking
        self.samples = check_int("samples", samples, 1)
        self.seed = seed
        self._generator: Optional[torch.Generator] = None
        self.transform = None
        if transforms is not None:
            from .eot import _compose

            if masking is not None or shrink is not None:
                raise ValueError("transforms (EOT) cannot be combined with masking or shrink")
            self.transform = _compose(transforms)

    def reseed(self) -> "CTCTargetedAttack":
        """Restart the transforms' random stream at ``seed`` (:meth:`mmrobust.attacks.Attack.reseed`)."""
        self.restart_stream()
        return self

    def describe(self) -> str:
        eot = "" if self.transform is None else f", EOT samples={self.samples}"
        return f"CTCTargetedAttack({self.threat!r}, steps={self.steps}, step_size={self.step_size:g}{eot})"

    def _eot_step(self, model: nn.Module, x: Tensor, leaf: Tensor, flat: Tensor, tlen: Tensor, seqs,
                  generator: torch.Generator, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Mean CTC loss over ``samples`` fresh transforms of ``x + leaf`` (per example) and, per example, the
        share of those transforms under which the greedy decoding is the target."""
        total, hits = 0.0, torch.zeros(x.shape[0], device=x.device)
        for _ in range(self.samples):
            lp, frames = self.log_probs(model, self.transform(x + leaf, generator), lengths)
            total = total + self.ctc_loss(lp, frames, flat, tlen)
            hits += torch.tensor([d == s for d, s in zip(greedy_decode(lp.detach(), self.blank, frames), seqs)],
                                 dtype=hits.dtype, device=x.device)
        return total / self.samples, hits / self.samples

    def log_probs(self, model: nn.Module, wave: Tensor, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``(B, frames, C)`` log-probabilities and valid frames per example (all frames, unless the model
        returns frame lengths or ``lengths`` valid samples are given; see the class docstring)."""
        out = model(wave)
        frames = None
        if isinstance(out, (tuple, list)):
            out, frames = out[0], out[1]
        if not isinstance(out, Tensor) or out.dim() != 3:
            raise ValueError(f"the model must return CTC scores of shape (B, frames, C) or (frames, B, C), "
                             f"got {getattr(out, 'shape', type(out).__name__)}")
        if self.layout == "TBC":
            out = out.transpose(0, 1)
        if out.shape[0] != wave.shape[0]:
            raise ValueError(f"model output has batch size {out.shape[0]} but the input {wave.shape[0]}; "
                             f"check layout={self.layout!r}")
        n_frames = out.shape[1]
        if frames is None and lengths is not None:
            lengths = lengths.to(out.device).long()
            if callable(getattr(model, "frame_lengths", None)):
                frames = model.frame_lengths(lengths)
            else:
                frames = torch.div(lengths * n_frames + wave.shape[-1] - 1, wave.shape[-1], rounding_mode="floor")
            frames = frames.clamp(1, n_frames)
        if frames is None:
            frames = torch.full((out.shape[0],), n_frames, dtype=torch.long, device=out.device)
        return out.log_softmax(-1), frames.long()

    def ctc_loss(self, log_probs: Tensor, frames: Tensor, flat: Tensor, target_lengths: Tensor) -> Tensor:
        loss = F.ctc_loss(log_probs.transpose(0, 1), flat, frames, target_lengths, blank=self.blank,
                          reduction="none", zero_infinity=True)
        return loss

    def __call__(self, model: nn.Module, wave: Tensor, targets: Targets,
                 lengths: Optional[Tensor] = None, init: Optional[Tensor] = None) -> CTCAttackResult:
        """Attack ``wave`` (floats in [-1, 1]) towards the label sequences ``targets`` (one list per example);
        ``lengths`` (valid samples per example) keeps the padding clean; ``init`` is a starting perturbation
        (projected onto the threat model)."""
        check_waveform(wave)
        with attack_mode(model):
            x = normal_tensor(wave).detach()
            self.threat.check_input(x, name="wave")
            flat, tlen, seqs = _pack_targets(targets, x.shape[0], x.device)
            lengths = None if lengths is None else normal_tensor(lengths)
            mask = None if lengths is None else length_mask(lengths, x)
            if mask is not None:
                self.threat.check_padding(x, mask, name="wave")
            radius = self.threat.radius(x)
            with torch.no_grad():
                lp, frames = self.log_probs(model, x, lengths)
            _check_targets(seqs, frames, lp.shape[-1], self.blank)
            clean_decoded = greedy_decode(lp, self.blank, frames)
            delta = torch.zeros_like(x)
            if init is not None:
                if init.shape != x.shape:
                    raise ValueError(f"init must have the shape of wave {tuple(x.shape)}, got {tuple(init.shape)}")
                delta = normal_tensor(init).detach().to(x.device, x.dtype)
                delta = self.threat.project(delta if mask is None else delta * mask, x, radius)
            m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
            best = torch.zeros_like(x)
            found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            thr = None if self.masking is None else self.masking.threshold(x)
            weights = None if self.masking is None else self.masking.initial_weights(x)
            best_pen = torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
            first = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
            b1, b2 = self.betas
            eot = self.transform is not None
            gen = self.generator() if eot else None
            best_share = torch.full((x.shape[0],), -1.0, device=x.device)
            for step in range(1, self.steps + 1):
                leaf = delta.detach().requires_grad_(True)
                if not eot:
                    lp, frames = self.log_probs(model, x + leaf, lengths)
                    loss = self.ctc_loss(lp, frames, flat, tlen)
                else:
                    loss, share = self._eot_step(model, x, leaf, flat, tlen, seqs, gen, lengths)
                grad, = torch.autograd.grad(loss.sum(), leaf)
                if not bool(torch.isfinite(grad).all()):
                    raise NonFiniteError("NaN/Inf in the CTC input gradient")
                if mask is not None:  # Adam's direction is ~1 wherever the gradient is not 0: the padding's
                    grad = grad * mask  # share would shrink the (L2/SNR-normalised) step once masked
                with torch.no_grad():
                    if eot:  # EOT: keep the latest iterate with the highest share of target decodings
                        new = share >= best_share
                        best_share = torch.maximum(best_share, share)
                        reached = share >= 1.0
                    else:
                        hit = torch.tensor([d == s for d, s in zip(greedy_decode(lp, self.blank, frames), seqs)],
                                           device=x.device)
                        if thr is not None:
                            pen, pen_grad = self.masking.value_and_grad(delta, thr)
                            new = hit & (pen.double() < best_pen)
                            best_pen = torch.where(new, pen.double(), best_pen)
                            grad = grad + weights.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) * pen_grad
                            weights = self.masking.update(weights, step, hit)
                        else:
                            new = hit & ~found if self.shrink is None else hit
                        reached = new
                    first = torch.where(reached & (first < 0), torch.full_like(first, step - 1), first)
                    if bool(new.any()):
                        sel = new.reshape(-1, *([1] * (x.dim() - 1)))
                        best = torch.where(sel, delta, best)
                        found |= new
                        if self.shrink is not None:
                            radius = torch.where(new, torch.minimum(radius, self.threat.size(delta, x)) * self.shrink,
                                                 radius)
                    m1 = b1 * m1 + (1 - b1) * grad
                    m2 = b2 * m2 + (1 - b2) * grad * grad
                    direction = -(m1 / (1 - b1 ** step)) / ((m2 / (1 - b2 ** step)).sqrt() + 1e-12)
                    delta = self.threat.step(delta, direction, radius * self.step_size)
                    if mask is not None:
                        delta = delta * mask
                    delta = self.threat.project(delta, x, radius)
                    if self.shrink is None and thr is None and not eot and bool(found.all()):
                        break
            final = torch.where(found.reshape(-1, *([1] * (x.dim() - 1))), best, delta)
            adv = (x + final).detach()
            with torch.no_grad():
                lp, frames = self.log_probs(model, adv, lengths)
                loss = self.ctc_loss(lp, frames, flat, tlen)
                decoded = greedy_decode(lp, self.blank, frames)
            success = torch.tensor([d == s for d, s in zip(decoded, seqs)], device=x.device)
            extras = {f"wave/{k}": v for k, v in self.threat.extra_sizes(final, x).items()}
            if thr is not None:
                extras.update({f"wave/{k}": v for k, v in self.masking.report(final, x, thr).items()})
            if eot:
                extras["eot/success_share"] = best_share
            return CTCAttackResult(wave=adv, success=success, decoded=decoded, clean_decoded=clean_decoded,
                                   loss=loss.detach(), size=self.threat.size(final, x), steps_to_success=first,
                                   attack=self.describe(), extras=extras)

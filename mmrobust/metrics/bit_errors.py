"""Accuracy under random bit errors in the quantised weights (Stutz et al. 2021, https://arxiv.org/abs/2006.13977)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from ..adapters.base import BatchAdapter
from ..attacks.base import victim_for
from ..compression.bit_errors import bit_errors, has_quantized_weights
from ..compression.quantization import QuantizerConfig, quantize_model, remove_quantizers
from ..errors import check_fraction, check_int
from ..utils import SavedModes, make_generator


class BitErrorAccuracy(Metric):
    """Mean, spread and worst case of the accuracy over random bit error patterns, for several rates.

    Stutz et al. 2021 (Sec. 3, "RErr") evaluate a quantised model on ``K`` fixed random patterns per bit
    error rate ``p`` and report the mean and spread over patterns:

    .. math:: \\mathrm{Acc}_{p,k} = \\frac{1}{N}\\sum_n \\mathbb 1[f(x_n; \\widetilde{Q(w)}^{(p,k)}) = y_n],\\quad
        \\text{mean}_k,\\ \\text{std}_k,\\ \\min_k \\mathrm{Acc}_{p,k}

    Pattern ``k`` at rate index ``r`` is drawn from seed :meth:`pattern_seed` ``(r, k)``, the same for
    every batch, so each ``Acc_{p,k}`` is the accuracy of one perturbed model over the whole data set. The
    patterns are drawn by a CPU generator and moved to the weights' device, so a seed gives the same
    patterns, and the same numbers up to float rounding, on CPU and CUDA.
    ``update(model, batch)`` runs ``len(rates) * patterns + 1`` forward passes in eval mode (the model's
    modes are restored). Batches of any modality are read through their adapter (``adapter=None``
    infers it), so graph node classification counts nodes.

    ``compute()`` returns a dict: ``clean`` (scalar), and per rate (tensors of length ``len(rates)``)
    ``mean``, ``std`` (sample std over patterns), ``min``, ``max``; ``rates`` repeats the rates (with a single
    rate torchmetrics squeezes them to scalars).

    Args:
        rates: bit error rates in [0, 1].
        patterns: number of random patterns ``K`` per rate.
        seed: base seed of the patterns.
        quantizer: used to quantise models without quantised weights for the duration of ``update``.

    Example:
        >>> from mmrobust.compression import QuantizerConfig
        >>> from mmrobust.metrics import BitErrorAccuracy
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> metric = BitErrorAccuracy(rates=(0.0, 0.01), patterns=3, quantizer=QuantizerConfig(bits=8))
        >>> metric.update(model, (x, y))              # quantised for the update only; the weights come back unchanged
        >>> out = metric.compute()
        >>> float(out["clean"]), float(out["mean"][0]), out["min"].shape
        (0.5, 0.5, torch.Size([2]))
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, rates: Sequence[float] = (0.001, 0.005, 0.01), patterns: int = 10, *, seed: int = 0,
                 quantizer: Optional[QuantizerConfig] = None, adapter: Optional[BatchAdapter] = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rates, (int, float)):
            rates = (rates,)
        if len(rates) == 0:
            raise ValueError("rates must be a non-empty sequence of bit error rates in [0, 1]")
        self.rates = tuple(check_fraction("rates", r) for r in rates)
        self.patterns = check_int("patterns", patterns, 1)
        self.seed = check_int("seed", seed, 0)
        self.quantizer = quantizer
        self.adapter = adapter
        self.add_state("correct", default=torch.zeros(len(self.rates), self.patterns, dtype=torch.long),
                       dist_reduce_fx="sum")
        self.add_state("clean_correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def pattern_seed(self, rate_index: int, pattern: int) -> int:
        return (self.seed * 1_000_003 + rate_index * 10_007 + pattern) % (2 ** 63)

    @torch.no_grad()
    def update(self, model: nn.Module, batch: Any) -> None:
        temporary = not has_quantized_weights(model)
        if temporary and self.quantizer is None:
            raise ValueError("model has no quantised weights; quantise it (mmrobust.compression.quantize_model) "
                             "or give BitErrorAccuracy(quantizer=QuantizerConfig(...))")
        saved = SavedModes(model)
        try:
            if temporary:
                quantize_model(model, self.quantizer)
            model.eval()
            victim = victim_for(model, batch, self.adapter)
            inputs = victim.inputs
            target = victim.target
            device = target.device
            correct = torch.zeros(len(self.rates), self.patterns, dtype=torch.long, device=device)
            clean = (victim.forward(inputs).argmax(1) == target).sum()
            for r, rate in enumerate(self.rates):
                for k in range(self.patterns):
                    # drawn on the CPU and moved, so a seed gives the same patterns on every device
                    gen = make_generator(self.pattern_seed(r, k), "cpu")
                    with bit_errors(model, rate, generator=gen):
                        correct[r, k] = (victim.forward(inputs).argmax(1) == target).sum()
        finally:
            saved.restore()
            if temporary:
                remove_quantizers(model)   # only the quantisers added here: pruning masks / Fourier kernels stay
        # not in place: states may be inference tensors inside Lightning's eval loop
        self.correct = self.correct + correct.to(self.correct.device)
        self.clean_correct = self.clean_correct + clean.to(self.clean_correct.device)
        self.total = self.total + target.numel()

    def compute(self) -> Dict[str, Tensor]:
        return bit_error_accuracy_compute(self.correct, self.clean_correct, self.total, self.rates)

    def per_pattern(self) -> Tensor:
        """Accuracy of every (rate, pattern) pair, shape ``(len(rates), patterns)``."""
        return self.correct.double() / self.total.double().clamp_min(1)


def bit_error_accuracy_compute(correct: Tensor, clean_correct: Tensor, total: Tensor,
                               rates: Sequence[float]) -> Dict[str, Tensor]:
    """From the counts (``correct``: per rate and pattern): ``rates``, ``clean`` and per rate ``mean``, ``std``,
    ``min``, ``max`` of the accuracy over patterns; NaN when nothing was counted."""
    if int(total) == 0:
        nan = torch.full((len(rates),), float("nan"))
        return {"rates": torch.tensor(rates), "clean": torch.tensor(float("nan")), "mean": nan,
                "std": nan, "min": nan, "max": nan}
    acc = correct.double() / total.double()
    std = acc.std(1) if acc.shape[1] > 1 else torch.zeros_like(acc[:, 0])
    return {"rates": torch.tensor(rates, dtype=torch.float64), "clean": clean_correct.double() / total,
            "mean": acc.mean(1), "std": std, "min": acc.amin(1), "max": acc.amax(1)}


def bit_error_accuracy(model: nn.Module, batch: Any, rates: Sequence[float] = (0.001, 0.005, 0.01),
                       patterns: int = 10, **kwargs: Any) -> Dict[str, Tensor]:
    """:class:`BitErrorAccuracy` of one batch (its update is the measurement: ``len(rates) * patterns + 1``
    forward passes under random bit errors); ``kwargs`` as the class's."""
    metric = BitErrorAccuracy(rates, patterns, **kwargs)
    metric.update(model, batch)
    return metric.compute()

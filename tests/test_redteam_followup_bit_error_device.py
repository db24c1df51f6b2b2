"""Red team follow-up: bit-error patterns of a seed do not depend on the device the model is on.

The generator used to be created on the model's device, so CPU and CUDA gave different patterns (and
different ``BitErrorAccuracy`` numbers) for the same seed. The CUDA comparison needs a GPU; on CPU the same
defect shows with a model whose first parameter lives on a device without generators ("meta"): the patterns
must be drawn on the CPU whatever that device is.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrobust.callbacks import RandomBitErrorTraining
from mmrobust.compression import QuantizerConfig
from mmrobust.compression.bit_errors import bit_errors, sample_bit_flips
from mmrobust.compression.quantization import quantize_model, quantizer_input, quantized_modules
from mmrobust.metrics import BitErrorAccuracy
from mmrobust.utils import make_generator, toy_problem


class _WithMetaBuffer(nn.Module):
    """A model whose first parameter sits on another device than its weights (unused in forward)."""

    def __init__(self, net):
        super().__init__()
        self.elsewhere = nn.Parameter(torch.zeros(1, device="meta"))
        self.net = net

    def forward(self, x):
        return self.net(x)


def _flips_by_layer(model, **kwargs):
    with bit_errors(model, 0.05, **kwargs) as flips:
        return {name: (f.index.clone(), f.words.clone()) for name, f in flips.items()}


def test_bit_errors_seed_draws_on_the_cpu_whatever_the_model_device():
    model, x, y = toy_problem()
    quantize_model(model, QuantizerConfig(bits=8))
    reference = _flips_by_layer(model, seed=7)
    wrapped = _WithMetaBuffer(model)
    assert next(wrapped.parameters()).device.type == "meta"
    moved = _flips_by_layer(wrapped, seed=7)              # raised: no generator on "meta"
    assert {k.removeprefix("net."): v for k, v in moved.items()}.keys() == reference.keys()
    for name, (index, words) in moved.items():
        assert torch.equal(index, reference[name.removeprefix("net.")][0])
        assert torch.equal(words, reference[name.removeprefix("net.")][1])


def test_bit_error_accuracy_does_not_follow_the_model_device():
    model, x, y = toy_problem()
    metric = BitErrorAccuracy(rates=(0.05, 0.2), patterns=3, quantizer=QuantizerConfig(bits=8))
    metric.update(model, (x, y))
    other = BitErrorAccuracy(rates=(0.05, 0.2), patterns=3, quantizer=QuantizerConfig(bits=8))
    other.update(_WithMetaBuffer(model), (x, y))          # raised
    assert torch.equal(metric.correct, other.correct)


def test_pattern_is_the_documented_cpu_draw():
    model, x, y = toy_problem()
    quantize_model(model, QuantizerConfig(bits=8))
    name, module, fq = next(iter(quantized_modules(model)))
    with torch.no_grad():
        w = quantizer_input(module, fq)
    expected = sample_bit_flips(w.shape, fq.cfg.bits, 0.05, generator=make_generator(7, "cpu"))
    got = _flips_by_layer(model, seed=7)[name]
    assert torch.equal(got[0], expected.index) and torch.equal(got[1], expected.words)


def test_randbet_stream_is_on_the_cpu_and_resumes():
    callback = RandomBitErrorTraining(0.01, seed=3)
    gen = callback._gen()
    assert gen.device.type == "cpu"
    torch.rand(5, generator=gen)
    state = callback.state_dict()
    resumed = RandomBitErrorTraining(0.01, seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(torch.rand(4, generator=resumed._gen()), torch.rand(4, generator=gen))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_seed_same_patterns_on_cpu_and_cuda():
    model, x, y = toy_problem()
    quantize_model(model, QuantizerConfig(bits=8))
    on_cpu = _flips_by_layer(model, seed=11)
    on_cuda = _flips_by_layer(model.cuda(), seed=11)
    for name, (index, words) in on_cpu.items():
        assert torch.equal(index, on_cuda[name][0].cpu()) and torch.equal(words, on_cuda[name][1].cpu())
    cpu_metric = BitErrorAccuracy(rates=(0.05,), patterns=2)
    cuda_metric = BitErrorAccuracy(rates=(0.05,), patterns=2)
    cpu_metric.update(model.cpu(), (x, y))
    cuda_metric.update(model.cuda(), (x.cuda(), y.cuda()))
    assert torch.equal(cpu_metric.correct, cuda_metric.correct.cpu())

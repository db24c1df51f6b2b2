"""The order of the compression callbacks in Trainer(callbacks=[...]) does not matter.

The README's snippet ``[Quantization(...), RandomBitErrorTraining(...), Pruning(...)]`` trains, and every
order of the three builds the same parametrisation chain (mask before quantiser), the same checkpoint keys
and bit-identical weights.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from _reliability_common import DigitsModule, digits_loader, trainer, weights
from mmrobust.callbacks import FourierSparsity, Pruning, Quantization, RandomBitErrorTraining
from mmrobust.compression import PruningMask
from mmrobust.compression.fourier import FourierKernel
from mmrobust.compression.quantization import FakeQuantize

MAKERS = {
    "Quantization": lambda: Quantization(bits=8, clip=0.1),
    "RandomBitErrorTraining": lambda: RandomBitErrorTraining(rate=0.01, seed=0),
    "Pruning": lambda: Pruning(sparsity=0.5, begin_step=1, end_step=3, frequency=1),
}


def _fit(order, digits, tmp_path):
    module = DigitsModule()
    t = trainer(tmp_path, [MAKERS[name]() for name in order], max_steps=4)
    t.fit(module, digits_loader(digits, n=64))
    return module


def test_every_order_of_the_readme_compression_callbacks_trains_the_same_model(digits, tmp_path):
    reference = None
    for order in itertools.permutations(MAKERS):
        module = _fit(order, digits, tmp_path)
        for layer in (module.net[0], module.net[4]):
            chain = list(layer.parametrizations.weight)
            assert [type(p) for p in chain] == [PruningMask, FakeQuantize], order
        state = weights(module)
        sparsity = float((module.net[4].weight == 0).float().mean())
        assert sparsity >= 0.4, order  # pruned (global ranking), and the quantiser kept the zeros
        if reference is None:
            reference = (order, state)
            continue
        assert state.keys() == reference[1].keys(), (order, reference[0])
        changed = [k for k in state if not torch.equal(state[k], reference[1][k])]
        assert not changed, f"{order} differs from {reference[0]} in {changed}"


def test_fourier_sparsity_goes_first_in_the_chain_whatever_the_order(digits, tmp_path):
    chains = []
    for callbacks in ([Quantization(bits=8), FourierSparsity(0.5)], [FourierSparsity(0.5), Quantization(bits=8)]):
        module = DigitsModule()
        trainer(tmp_path, callbacks, max_steps=1).fit(module, digits_loader(digits, n=16))
        chains.append([type(p) for p in module.net[0].parametrizations.weight])
    assert chains[0] == chains[1] == [FourierKernel, FakeQuantize]


def test_adding_masks_to_a_quantised_model_by_hand_says_how_to_order_it():
    from mmrobust.compression import add_masks, prunable_modules, quantize_model

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    quantize_model(model)
    with pytest.raises(ValueError, match=r"add the pruning masks before quantising .* callbacks do this in any order"):
        add_masks(prunable_modules(model))

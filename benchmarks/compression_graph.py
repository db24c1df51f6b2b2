"""Compression and weight robustness of a 2-layer GCN on Cora (CPU-sized; the graph column of issue 6).

Part ``biterrors``: 8-bit quantised GCN (PyG ``Linear`` weights inside ``GCNConv``) trained normally, with
weight clipping, and with RandBET (Stutz et al. 2021); test-node accuracy under random bit errors
(mean ± std (min) over patterns, :class:`~mmrobust.metrics.BitErrorAccuracy`).
Part ``pruning``: a PRBCD adversarially trained GCN (Xu et al. 2019 on the transductive public split)
pruned to 50/90/95% sparsity by magnitude vs HYDRA importance scores (Sehwag et al. 2020, scores
optimised against PRBCD on the training nodes), each followed by a short PRBCD-AT fine-tuning; clean and
robust test accuracy under PRBCD at a global 5% edge-flip budget.

    python benchmarks/compression_graph.py --part biterrors
    python benchmarks/compression_graph.py --part pruning

Cora is read from ``--data`` (a directory with ``Cora/raw``; default ../shared/data/planetoid), copied to a
writable temporary directory; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402

from benchmarks.common import (SHARED_DATA, Timer, add_bit_error_args, bit_error_rows, bit_error_settings,  # noqa: E402
                               bit_error_table, pruning_rows, pruning_table, run_part, timed_fit)
from mmrobust.adapters import GraphAdapter  # noqa: E402
from mmrobust.attacks import PRBCD  # noqa: E402
from mmrobust.graph import GCN, NodeClassifier, load_planetoid, node_accuracy, train_node_classifier  # noqa: E402
from mmrobust.metrics import BitErrorAccuracy  # noqa: E402
from mmrobust.threats import EdgeFlips  # noqa: E402

TRAIN_NODES = GraphAdapter(mask="train")


def train_loss(model: nn.Module, data) -> torch.Tensor:
    """Cross-entropy on the training nodes only (the test labels must never reach a training loss)."""
    victim = TRAIN_NODES.victim(model, data)
    return nn.functional.cross_entropy(victim.forward(victim.inputs), victim.target)


def load_cora(source: str):
    root = Path(tempfile.mkdtemp(prefix="mmrobust_cora_"))
    return load_planetoid("Cora", root, source=source)


def gcn(data, hidden: int) -> GCN:
    return GCN(data.num_features, int(data.y.max()) + 1, hidden=hidden, dropout=0.5)


def part_biterrors(args):
    data = load_cora(args.data)
    rates = tuple(args.rates)

    def train(callbacks):
        from torch_geometric.loader import DataLoader

        module = NodeClassifier(gcn(data, args.hidden), lr=0.01, weight_decay=5e-4)
        return module, timed_fit(module, args.epochs, callbacks, train_dataloaders=DataLoader([data], batch_size=1))

    def measure(module):
        metric = BitErrorAccuracy(rates, patterns=args.patterns, seed=1, adapter=GraphAdapter(mask="test"))
        metric.update(module, data)
        return metric.compute()

    settings = bit_error_settings(args.settings, clip=args.clip, randbet_rate=args.randbet_rate, loss_fn=train_loss)
    rows = bit_error_rows(settings, train, measure)
    print(f"\nGCN(hidden={args.hidden}, 2 layers, dropout 0.5) on Cora (public split, 1000 test nodes), 8-bit "
          f"asymmetric per-tensor QAT of the GCNConv (PyG Linear) weights, {args.epochs} full-batch epochs Adam "
          f"0.01 / wd 5e-4 (Lightning + Quantization callback), {args.patterns} bit-error patterns per rate\n")
    print(bit_error_table(rates, rows), flush=True)


BLOCK_SIZE = 50_000


def prbcd(budget: float, mask: str, epochs: int, seed: int) -> PRBCD:
    return PRBCD(EdgeFlips(budget), block_size=BLOCK_SIZE, epochs=epochs, epochs_resampling=int(0.8 * epochs),
                 loss="prob_margin", adapter=GraphAdapter(mask=mask), seed=seed)


def robust_accuracy(model, data, args) -> float:
    return float(prbcd(args.eps, "test", args.attack_epochs, seed=0)(model, data).robust.float().mean())


def part_pruning(args):
    global BLOCK_SIZE
    BLOCK_SIZE = args.block_size
    data = load_cora(args.data)
    pl.seed_everything(0)
    base = gcn(data, args.hidden)
    at_attack = prbcd(args.eps, "train", args.at_attack_epochs, seed=1)
    with Timer() as t:
        train_node_classifier(base, data, epochs=args.epochs, lr=0.01, weight_decay=5e-4, attack=at_attack,
                              attack_every=args.attack_every, clean_epochs=args.clean_epochs)
    base.eval()
    rows = [["dense (PRBCD-AT)", 0.0, 100 * node_accuracy(base, data), 100 * robust_accuracy(base, data, args), "-"]]
    print(rows[-1], f"AT {t.seconds:.0f}s", flush=True)
    # the dense model with the same fine-tuning as the pruned ones: the reference that isolates pruning
    def finetune(model):
        # adversarial fine-tuning of the surviving weights; the parametrised masks keep the rest at zero
        torch.manual_seed(0)
        train_node_classifier(model, data, epochs=args.finetune_epochs, lr=0.01, weight_decay=5e-4,
                              attack=prbcd(args.eps, "train", args.at_attack_epochs, seed=3),
                              attack_every=args.attack_every)

    plan = [(0.0, "dense + AT fine-tune")] + [(s, m) for s in args.sparsities
                                              for m in ("magnitude (layer)", "HYDRA (layer)")]
    rows += pruning_rows(base, plan, scope="layer", hydra_data=[data],
                         hydra_attack=lambda: prbcd(args.eps, "train", args.at_attack_epochs, 2),
                         hydra_epochs=args.score_steps, hydra_loss=train_loss,
                         finetune=finetune if args.finetune_epochs else None,
                         accuracies=lambda model: (node_accuracy(model, data), robust_accuracy(model, data, args)))
    print(f"\nGCN(hidden={args.hidden}, 2 layers) on Cora (public split); PRBCD-AT: {args.clean_epochs} clean + "
          f"{args.epochs - args.clean_epochs} adversarial epochs, a fresh PRBCD graph (global {100 * args.eps:g}% "
          f"edge flips scored on the training nodes, {args.at_attack_epochs} attack epochs) every "
          f"{args.attack_every} epochs; HYDRA: {args.score_steps} score steps (SGD 0.1) against the same PRBCD; "
          f"after pruning {args.finetune_epochs} epochs of PRBCD-AT fine-tuning; robust accuracy: PRBCD "
          f"({args.attack_epochs} epochs, prob_margin loss, block {BLOCK_SIZE}) at a global {100 * args.eps:g}% edge "
          f"budget on the 1000 test nodes\n")
    print(pruning_table(rows), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(SHARED_DATA / "planetoid"))
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=200)
    add_bit_error_args(parser, patterns=10)
    parser.add_argument("--eps", type=float, default=0.05, help="global edge-flip budget (fraction of edges)")
    parser.add_argument("--attack-epochs", type=int, default=30)
    parser.add_argument("--at-attack-epochs", type=int, default=5)
    parser.add_argument("--attack-every", type=int, default=10)
    parser.add_argument("--clean-epochs", type=int, default=50)
    parser.add_argument("--score-steps", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9, 0.95])
    parser.add_argument("--block-size", type=int, default=50_000, help="PRBCD block size (candidate edges)")
    run_part(parser, {"biterrors": part_biterrors, "pruning": part_pruning})


if __name__ == "__main__":
    main()

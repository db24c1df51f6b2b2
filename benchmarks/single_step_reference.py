"""Wong et al. 2020's own published MNIST models under this benchmark's evaluation.

``locuslab/fast_adversarial`` ships the weights its README trains (``MNIST/models/fgsm.pth``: FGSM-RS, eps
0.3, ``train_mnist.py``'s defaults; ``MNIST/models/pgd_madry.pth``: PGD-40, 100 epochs, Madry et al.'s
setting). Both are ``mnist_net`` = :class:`~mmrobust.image.StridedCNN`. This script loads them (from
``../shared/data/reference_models/locuslab_fast_adversarial_MNIST/``, extracted from the reference
repository; not part of the project) and evaluates them exactly as ``single_step_mnist.py`` evaluates its
runs -- PGD-50 x 10 (step 0.01), APGD-CE, APGD-T on the first 1000 test images -- plus PGD-50 (x 10, or fewer
restarts) on all 10,000 test images (the paper's ``evaluate_mnist.py`` attacks the whole test set), per block of
1000 so that the first 1000 can be compared with the rest, and ``evaluate_mnist.py``'s own PGD written
out (per-example freeze once misclassified, restart kept by the largest loss) on the first 1000.

    python benchmarks/single_step_reference.py                 # first 1000 -> results/single_step/reference_models.json
    python benchmarks/single_step_reference.py --models fgsm --full fgsm  # + all 10,000 (updates the file)
    python benchmarks/single_step_reference.py --models benchmarks/.cache/single_step/fgsm_rs_s2.pt --full ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED_DATA, accuracy, mnist_tensors  # noqa: E402
from benchmarks.single_step_mnist import EPS, OUT, eval_attacks  # noqa: E402
from mmrobust import evaluate  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.image import StridedCNN  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402

WEIGHTS = SHARED_DATA / "reference_models" / "locuslab_fast_adversarial_MNIST"
# mnist_net's nn.Sequential indices -> StridedCNN's submodules (same layers, same order)
KEYS = {"0": "features.0", "2": "features.2", "5": "classifier.1", "7": "classifier.3"}


def load(name: str) -> nn.Module:
    """A released model by name (``fgsm``, ``pgd_madry``) or a ``--save-model`` checkpoint of
    ``single_step_mnist.py`` by path (``benchmarks/.cache/single_step/<run>.pt``)."""
    model = StridedCNN()
    if name.endswith(".pt"):
        model.load_state_dict(torch.load(name, map_location="cpu"))
        return model.eval()
    state = torch.load(WEIGHTS / f"{name}.pth", map_location="cpu")
    model.load_state_dict({KEYS[k.split(".")[0]] + "." + k.split(".")[1]: v for k, v in state.items()})
    return model.eval()


def wong_pgd_correct(model: nn.Module, x, y, seed: int, steps: int = 50, restarts: int = 10,
                     alpha: float = 0.01) -> torch.Tensor:
    """``evaluate_mnist.py``'s ``attack_pgd`` written out: uniform start clipped to the box, sign steps of
    ``alpha`` only on examples still classified correctly (the loop ends when none is), the restart with the
    largest final loss kept per example. Returns which examples stay correct."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    max_loss, max_delta = torch.zeros(len(y)), torch.zeros_like(x)
    for _ in range(restarts):
        delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS
        delta = torch.max(torch.min(delta, 1 - x), -x).requires_grad_(True)
        for _ in range(steps):
            out = model(x + delta)
            index = (out.argmax(1) == y).nonzero().flatten()
            if len(index) == 0:
                break
            (grad,) = torch.autograd.grad(nn.functional.cross_entropy(out, y), delta)
            d = torch.clamp(delta + alpha * grad.sign(), -EPS, EPS)
            d = torch.max(torch.min(d, 1 - x), -x)
            delta.data[index] = d[index].detach()
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(x + delta), y, reduction="none")
        keep = loss >= max_loss
        max_delta[keep], max_loss = delta.detach()[keep], torch.max(max_loss, loss)
    with torch.no_grad():
        return model(x + max_delta).argmax(1) == y


def first_1000(model, xt, yt, threat, seed: int) -> dict:
    """Clean accuracy (first 1000 and all) and the benchmark's three attacks on the first 1000 test images,
    plus ``evaluate_mnist.py``'s PGD written out on the same images."""
    r = {"clean_first_1000": accuracy(model, xt[:1000], yt[:1000]), "clean_10000": accuracy(model, xt, yt)}
    test = [[xt[i:i + 250], yt[i:i + 250]] for i in range(0, 1000, 250)]
    ev = evaluate(model, test, eval_attacks(threat, seed), progress=False)
    r.update({k: ev["per_attack"][k] for k in ("pgd50x10", "apgd_ce", "apgd_t")}, worst=ev["robust_accuracy"])
    r["wong_evaluate_pgd50x10_first_1000"] = torch.cat(
        [wong_pgd_correct(model, xt[i:i + 100], yt[i:i + 100], seed + i) for i in range(0, 1000, 100)]
    ).float().mean().item()
    return r


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fgsm", "pgd_madry"],
                        help="released models by name, or single_step_mnist.py --save-model checkpoints by path")
    parser.add_argument("--full", nargs="*", default=[], help="models also attacked on all 10,000 test images "
                        "(PGD-50 x 10: about 30 min per model on one idle thread)")
    parser.add_argument("--only-full", action="store_true", help="skip the first-1000 evaluation (kept from an "
                        "earlier call in the results file)")
    parser.add_argument("--full-restarts", type=int, default=10, help="restarts of the PGD-50 on all 10,000 "
                        "(1 is 10x cheaper and enough to compare the first 1000 with the rest)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    xt, yt = mnist_tensors(False, None)
    threat = LinfBall(EPS, lower=0, upper=1)
    path = OUT / "reference_models.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.models:
        model, start, r = load(name), time.perf_counter(), {}
        key = Path(name).stem if name.endswith(".pt") else name
        if args.only_full:
            r["clean_10000"] = accuracy(model, xt, yt)
        else:
            r.update(first_1000(model, xt, yt, threat, args.seed))
            print(name, json.dumps(r), f"{time.perf_counter() - start:.0f} s", flush=True)
        if name in args.full:
            pgd = PGD(threat, steps=50, restarts=args.full_restarts, step_size=0.01 / EPS, seed=args.seed)
            blocks, tag = [], f"pgd50x{args.full_restarts}"
            for b in range(0, 10000, 1000):
                correct = [pgd(model, [xt[i:i + 250], yt[i:i + 250]]).adv_correct for i in range(b, b + 1000, 250)]
                blocks.append(torch.cat(correct).float().mean().item())
                print(name, "block", b // 1000, blocks[-1], f"{time.perf_counter() - start:.0f} s", flush=True)
            r[f"{tag}_per_1000_block"], r[f"{tag}_10000"] = blocks, sum(blocks) / len(blocks)
        results[key] = {**results.get(key, {}), **r}
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

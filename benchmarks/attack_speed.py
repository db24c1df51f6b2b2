"""PGD speed: examples per second, ours vs torchattacks vs ART, same model, batch and steps, one run.

Each round times every library once, in turn (interleaved, so background load hits all alike); the
table reports medians over rounds. Ours is timed three ways: ``attack(model, batch)`` (returns an
AttackResult: clean and best-iterate evaluations included), the same with ``early_stop=True`` (units
leave the working batch once adversarial: the same steps per example, less work) and
``attack.generate(model, batch)`` (the perturbed batch only, like the other two libraries return).

    python benchmarks/attack_speed.py --batch 256 --steps 10 --rounds 7 --eps 0.1 0.3

``--keep-freed-memory`` tunes glibc's allocator for the whole process (see
:func:`benchmarks.common.keep_freed_memory_in_process`): every library gets faster alike, the ratios stay.

The last column counts the model's work per example (forward+backward pairs): on a CPU the time is the
model's, so speed ratios follow work ratios. torchattacks does ``steps`` pairs; a full AttackResult adds
a clean and a final evaluation forward (``steps + 1``); ``early_stop`` drops each example once it is
misclassified, so its saving grows with the share of examples the attack breaks early.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (interleaved_medians, keep_freed_memory_in_process, markdown_table, mnist_cnn,  # noqa: E402
                               mnist_tensors)
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


def count_passes(model, fn):
    """Examples the model saw per call of ``fn``: (forward passes with autograd, forward passes without)."""
    seen = [0, 0]

    def hook(module, inputs, output):
        seen[0 if torch.is_grad_enabled() else 1] += inputs[0].shape[0]

    handle = model.register_forward_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return seen


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3],
                    help="one table per budget (0.1: the strength benchmark's; 0.3: MNIST's standard)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="keep freed memory in the process (glibc mallopt) for all libraries alike")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    allocator = "glibc defaults"
    if args.keep_freed_memory:
        allocator = "freed memory kept (mallopt)" if keep_freed_memory_in_process() else "glibc defaults (mallopt n/a)"

    import torchattacks
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    model = mnist_cnn(epochs=args.epochs, train_limit=args.train_limit)
    x, y = mnist_tensors(False, args.batch)
    x_np, y_np = x.numpy(), y.numpy()
    for eps in args.eps:
        alpha = eps / 4
        ours = PGD(LinfBall(eps, lower=0, upper=1), steps=args.steps, step_size=0.25, seed=0)
        ours_early = PGD(LinfBall(eps, lower=0, upper=1), steps=args.steps, step_size=0.25, seed=0, early_stop=True)
        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
        clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
        art = ProjectedGradientDescent(clf, norm="inf", eps=eps, eps_step=alpha, max_iter=args.steps,
                                       num_random_init=1, batch_size=args.batch, verbose=False)
        runs = {
            "mmrobust PGD (AttackResult)": lambda: ours(model, (x, y)),
            "mmrobust PGD (AttackResult, early_stop=True)": lambda: ours_early(model, (x, y)),
            "mmrobust PGD (generate)": lambda: ours.generate(model, (x, y)),
            "torchattacks PGD": lambda: ta(x, y),
            "ART ProjectedGradientDescent": lambda: art.generate(x_np, y=y_np),
        }
        passes = {name: count_passes(model, fn) for name, fn in runs.items()}  # also the warm-up
        med = interleaved_medians(runs, args.rounds)
        ta_s, art_s = med["torchattacks PGD"], med["ART ProjectedGradientDescent"]
        # work per example in forward+backward units: a backward costs about one forward
        work = {k: (2 * g + n) / 2 / args.batch for k, (g, n) in passes.items()}
        rows = [(k, args.batch / s, s, ta_s / s, art_s / s, work[k]) for k, s in med.items()]
        print(f"\nPGD L-inf eps={eps}, {args.steps} steps, batch {args.batch} MNIST images, SmallCNN, CPU, "
              f"{args.threads} threads, allocator: {allocator}, median of {args.rounds} interleaved rounds\n")
        print(markdown_table(["library", "examples / s", "seconds / batch", "speed vs torchattacks",
                              "speed vs ART", "model passes / example"], rows))
        robust = {name: float(r.robust.float().mean()) for name, r in
                  {"default": ours(model, (x, y)), "early_stop=True": ours_early(model, (x, y))}.items()}
        print(f"\nrobust accuracy of the timed batch: {robust}. Model passes: forward+backward pairs per example "
              "(a forward without gradients counts 1/2; ART's backward also computes weight gradients, which "
              "this count does not see)")


if __name__ == "__main__":
    main()

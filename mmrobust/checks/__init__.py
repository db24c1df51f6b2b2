"""Attack-failure checks: is the robust accuracy an evaluation reports only the attack's failure?

Cheap tests, on by default in :func:`mmrobust.evaluate`, :class:`~mmrobust.callbacks.RobustnessEvaluation`
and ``mmrobust evaluate``, for the known ways an attack fails silently (Carlini et al. 2019, "On Evaluating
Adversarial Robustness", https://arxiv.org/abs/1902.06705; Pintor et al. 2022, "Indicators of Attack
Failure", https://arxiv.org/abs/2106.09947). One function per check, registered in :data:`CHECKS`:

============================  =======  ==========================================================
check                         kind     fires when
============================  =======  ==========================================================
randomised_forward            model    two clean forward passes differ (use ``Ensemble.rand``/EOT)
probability_outputs           model    outputs are non-negative and rows sum to 1 (a final softmax)
zero_gradients                model    input gradients are zero or not finite at the start points
gradient_masking              model    autograd and finite differences disagree along a random direction
transfer_gap                  rerun    FGSM from the clean gradient breaks what the attacks left robust
budget_curve                  rerun    accuracy rises at 10x the budget, or stays high there
unconverged_loss              rerun    the attack's loss still rises at its last steps
late_restarts                 rerun    its last restart still finds new adversarial examples
black_box_beats_white_box     results  Square breaks what the gradient attacks left robust
edge_budget_unused            results  an edge attack leaves flips unused on graphs it did not break
============================  =======  ==========================================================

:class:`FailureChecks` runs them over an evaluation; each check function can also be called on its own.
"""

from .attack import (LossTrace, accuracy_curve_check, budget_curve, late_restarts, loss_trace, transfer_gap,
                     unconverged_loss)
from .base import CHECKS, Check, CheckResult, register, resolve_checks
from .model import gradient_masking, probability_outputs, randomised_forward, zero_gradients
from .results import black_box_beats_white_box, edge_budget_unused
from .runner import FailureChecks, fired_summary, sweep_checks, warn_fired

__all__ = ["CHECKS", "Check", "CheckResult", "FailureChecks", "LossTrace", "accuracy_curve_check",
           "black_box_beats_white_box", "budget_curve", "edge_budget_unused", "fired_summary", "gradient_masking",
           "late_restarts", "loss_trace", "probability_outputs", "randomised_forward", "register", "resolve_checks",
           "sweep_checks", "transfer_gap", "unconverged_loss", "warn_fired", "zero_gradients"]

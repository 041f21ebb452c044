"""How a run's training ended, and whether it ended before the model had learnt.

RecBole's trainer stops after ``stopping_step`` validations without a better ``valid_metric`` or
at ``epochs``. Either can cut a model short without a word: a validation score that dips after
the first epoch and recovers later than the patience allows ends the run with its best epoch at
0, and a cap reached while the score still rises keeps an epoch that is not the model's best. So
every trained run is checked and, when it looks cut short, flagged by name (the log, the results
JSON's ``training.undertrained``, every report table):

``early-best``
    stopped by patience with its best epoch among the first ``EARLY_BEST_EVALUATIONS``
    validations: the run may have stopped before it learnt (more patience: ``--stopping_step``,
    or ``vlm4rec bench --rerun-undertrained``);
``still-improving``
    trained every epoch of its cap with its best epoch in the last ``NEAR_CAP_SHARE`` of the
    epochs (at least the last validation): it was still improving (more epochs).

One-pass models (``epochs`` 1: VLM4Rec, EASE, Pop, ItemKNN...) are never flagged.
"""

from __future__ import annotations

import math
from typing import Any

EARLY_BEST_EVALUATIONS = 3  # "the first few epochs": the first three validations
NEAR_CAP_SHARE = 0.1  # "at or near the cap": the last tenth of the epochs
REASONS = ("early-best", "still-improving")


class ValidCurve:
    """RecBole's ``callback_fn`` for ``Trainer.fit``: the validation score of each evaluation."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def __call__(self, epoch_idx: int, valid_score: float) -> None:
        self.points.append((int(epoch_idx), float(valid_score)))

    def best_epoch(self, bigger: bool = True) -> int | None:
        """The epoch RecBole kept: the last one whose score equalled or beat every earlier one
        (its early stopping counts a tie as an improvement and saves that checkpoint)."""
        best_epoch, best = None, -math.inf if bigger else math.inf
        for epoch, score in self.points:
            if (score >= best) if bigger else (score <= best):
                best_epoch, best = epoch, score
        return best_epoch


def training_summary(trainer: Any, curve: ValidCurve, valid_metric: str) -> dict[str, Any]:
    """``epochs`` (the cap), ``epochs_run``, ``best_epoch``, ``stopped_early``, ``capped``,
    ``stopping_step``, ``eval_step``, ``valid_curve`` ([[epoch, score], ...]) and
    ``undertrained`` (None, or its reason and a one-line message)."""
    cap, eval_step = int(trainer.epochs), int(trainer.eval_step or 0)
    epochs_run = len(trainer.train_loss_dict)
    best = curve.best_epoch(bool(getattr(trainer, "valid_metric_bigger", True)))
    stopped_early = epochs_run < cap
    summary = {"epochs": cap, "epochs_run": epochs_run, "best_epoch": best,
               "stopped_early": stopped_early, "capped": cap > 1 and not stopped_early,
               "stopping_step": int(trainer.stopping_step), "eval_step": eval_step,
               "valid_metric": valid_metric,
               "valid_curve": [[epoch, round(score, 6)] for epoch, score in curve.points]}
    summary["undertrained"] = undertrained(summary)
    return summary


def undertrained(training: dict[str, Any]) -> dict[str, str] | None:
    """``{"reason": "early-best" | "still-improving", "message": one line}``, or None."""
    cap, best = int(training.get("epochs") or 0), training.get("best_epoch")
    eval_step = max(int(training.get("eval_step") or 1), 1)
    if cap <= 1 or best is None:
        return None  # a one-pass model, or nothing was validated
    metric = training.get("valid_metric") or "valid_metric"
    patience = training.get("stopping_step")
    run = int(training.get("epochs_run") or 0)
    if training.get("stopped_early") and best < EARLY_BEST_EVALUATIONS * eval_step:
        return {"reason": "early-best", "message": (
            f"stopped by patience (stopping_step={patience}) after {run} epochs with its best "
            f"validation {metric} at epoch {best}: it may have stopped before learning; rerun "
            f"with more patience (--stopping_step, or vlm4rec bench --rerun-undertrained)")}
    near = max(eval_step, math.ceil(NEAR_CAP_SHARE * cap))
    if training.get("capped") and best >= cap - near:
        return {"reason": "still-improving", "message": (
            f"reached the epoch cap ({cap}) with its best validation {metric} at epoch {best}: "
            f"still improving; rerun with more epochs (--epochs, or vlm4rec bench "
            f"--rerun-undertrained)")}
    return None

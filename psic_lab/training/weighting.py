"""Adaptive multi-objective weighting of the shield stage: distortion against privacy, as a constrained problem.

Minimise the privacy loss subject to "this view's PSNR is at most ``budget_db`` below the reference full
view's".  Each keyless view's distortion weight ``nu`` is the Lagrange multiplier of its constraint, updated
by dual ascent, multiplicatively, on an exponential moving average of the measured gap::

    gap_ema <- gap                                  (first measurement)
    gap_ema <- 0.95 gap_ema + 0.05 gap              (then)
    nu      <- clip(nu * exp(lr * (gap_ema - budget_db)), nu_min, nu_max)

So a view over its budget weighs its distortion more, one within it less.  ``adaptive=False`` keeps every
``nu`` at its initial value (the ablation) while the gap EMA is still tracked for the log.
"""

from __future__ import annotations

import math

from psic_cli.views import View


class DualAscentWeighting:
    """Per-view distortion weights ``nu`` with PSNR-gap budgets, updated by dual ascent; ``state_dict``-able.

    Args:
        nu: initial weight per view.
        budget_db: allowed PSNR gap per view (dB below the reference full view).
        lr: dual-ascent step.
        nu_min, nu_max: bounds of every weight.
        adaptive: False keeps the weights fixed.
        ema: decay of the gap's moving average.
    """

    def __init__(self, nu: dict[View, float], budget_db: dict[View, float], lr: float, nu_min: float,
                 nu_max: float, adaptive: bool = True, ema: float = 0.95) -> None:
        if set(nu) != set(budget_db):
            raise ValueError(f"nu and budget_db must name the same views: {sorted(nu)} vs {sorted(budget_db)}")
        if not 0 < nu_min <= nu_max:
            raise ValueError(f"need 0 < nu_min <= nu_max, got {nu_min}, {nu_max}")
        self.nu = {View(v): float(w) for v, w in nu.items()}
        self.budget_db = {View(v): float(b) for v, b in budget_db.items()}
        self.gap_ema: dict[View, float | None] = dict.fromkeys(self.nu)
        self.lr, self.nu_min, self.nu_max = lr, nu_min, nu_max
        self.adaptive, self.ema = adaptive, ema

    def weight(self, view: View) -> float:
        """The current weight of ``view``'s distortion."""
        return self.nu[view]

    def update(self, view: View, gap_db: float) -> None:
        """Record a measured gap of ``view`` (dB below the reference) and take one dual-ascent step."""
        prev = self.gap_ema[view]
        ema = gap_db if prev is None else self.ema * prev + round(1 - self.ema, 12) * gap_db
        self.gap_ema[view] = ema
        if self.adaptive:
            step = self.nu[view] * math.exp(self.lr * (ema - self.budget_db[view]))
            self.nu[view] = min(max(step, self.nu_min), self.nu_max)

    def state_dict(self) -> dict:
        return {"nu": {str(v): w for v, w in self.nu.items()}, "gap_ema": {str(v): g for v, g in self.gap_ema.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output; views it lacks keep their current values."""
        for v in self.nu:
            if str(v) in state.get("nu", {}):
                self.nu[v] = float(state["nu"][str(v)])
            if str(v) in state.get("gap_ema", {}):
                self.gap_ema[v] = state["gap_ema"][str(v)]

    def log_record(self) -> dict[str, float]:
        """``nu_<view>`` and ``gap_ema_<view>`` (once measured), rounded for the log."""
        return {**{f"nu_{v}": round(w, 4) for v, w in self.nu.items()},
                **{f"gap_ema_{v}": round(g, 3) for v, g in self.gap_ema.items() if g is not None}}

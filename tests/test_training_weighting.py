"""The adaptive weighting: dual ascent on each view's PSNR-gap budget, bounded, and checkpointed."""

import math

import pytest

from psic_cli.views import View
from psic_lab.training.weighting import DualAscentWeighting

S, T = View.SHIELDED, View.STRONG


def _weighting(**kw) -> DualAscentWeighting:
    args = dict(nu={S: 1.0, T: 1.0}, budget_db={S: 0.85, T: 2.5}, lr=0.1, nu_min=0.5, nu_max=2.0)
    return DualAscentWeighting(**{**args, **kw})


def test_over_budget_raises_the_weight_within_budget_lowers_it():
    w = _weighting()
    w.update(S, 1.85)  # 1 dB over its budget
    assert w.weight(S) == pytest.approx(math.exp(0.1 * 1.0))
    w.update(T, 1.5)  # 1 dB within its budget
    assert w.weight(T) == pytest.approx(math.exp(-0.1 * 1.0))
    # the second update reads the moving average of the gap, not the last gap alone
    w.update(S, 0.85)
    ema = 0.95 * 1.85 + 0.05 * 0.85
    assert w.gap_ema[S] == pytest.approx(ema)
    assert w.weight(S) == pytest.approx(math.exp(0.1) * math.exp(0.1 * (ema - 0.85)))


def test_weights_stay_within_bounds():
    w = _weighting()
    for _ in range(100):
        w.update(S, 30.0)
        w.update(T, -30.0)
    assert w.weight(S) == 2.0 and w.weight(T) == 0.5


def test_fixed_weighting_keeps_nu_but_tracks_the_gap():
    w = _weighting(adaptive=False)
    w.update(S, 5.0)
    assert w.weight(S) == 1.0 and w.gap_ema[S] == 5.0


def test_state_dict_round_trip():
    w = _weighting()
    w.update(S, 3.0)
    state = w.state_dict()
    assert state == {"nu": {"shielded": w.weight(S), "strong": 1.0}, "gap_ema": {"shielded": 3.0, "strong": None}}
    fresh = _weighting()
    fresh.load_state_dict(state)
    assert fresh.nu == w.nu and fresh.gap_ema == w.gap_ema
    assert fresh.log_record() == {"nu_shielded": round(w.weight(S), 4), "nu_strong": 1.0, "gap_ema_shielded": 3.0}


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        _weighting(nu_min=3.0, nu_max=2.0)
    with pytest.raises(ValueError):
        _weighting(budget_db={S: 1.0})

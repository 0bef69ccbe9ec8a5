"""Keep or discard: is a change better than the best by more than the metric's noise?

The same unchanged program scores differently run to run (a wall-clock budget gives a
different number of training steps each time, data order, timing). The baseline therefore
runs several times before the loop starts; the spread of those runs (max − min) times
``noise_spreads`` is the *noise floor*. A change is kept only when its score beats the best
by more than the floor. A result between half the floor and twice it is *marginal* (it may
be real, or luck): the experiment runs again (up to ``max_reruns`` more times) and the mean
of its runs decides, against a floor that shrinks as averaging shrinks the noise (by the
standard error of the difference of two means, relative to one run against the best).
``bench/autoresearch.py`` measures the wrong keeps and wrong discards this rule makes.

Each kept change gets a confidence: the probability, under a normal model of the noise with
the baseline runs' standard deviation, that its improvement is real and not the noise
(the best so far and the change each averaged over their own runs).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

KEEP, DISCARD, RERUN = "keep", "discard", "rerun"


@dataclass(frozen=True)
class Noise:
    """What the baseline's repeated runs say about the metric's run-to-run noise."""

    runs: tuple[float, ...]
    spreads: float = 1.0  # how many spreads a change must beat the best by

    @property
    def spread(self) -> float:
        return max(self.runs) - min(self.runs) if len(self.runs) > 1 else 0.0

    @property
    def floor(self) -> float:
        return self.spreads * self.spread

    @property
    def sigma(self) -> float:
        return statistics.stdev(self.runs) if len(self.runs) > 1 else 0.0

    @property
    def measured(self) -> bool:
        return len(self.runs) > 1

    def describe(self, metric: str) -> str:
        if not self.measured:
            return "noise floor not measured (1 baseline run): any improvement is kept"
        runs = ", ".join(f"{r:.6g}" for r in self.runs)
        return (
            f"noise floor {self.floor:.6g} ({self.spreads:g} × the spread {self.spread:.6g} "
            f"of {len(self.runs)} baseline runs of {metric}: {runs})"
        )


@dataclass(frozen=True)
class Verdict:
    status: str  # keep | discard | rerun
    score: float  # the mean of the runs so far
    gain: float  # how much better than the best (positive: better)
    confidence: float


def gain(direction: str, new: float, best: float) -> float:
    return best - new if direction == "lower" else new - best


def confidence(improvement: float, sigma: float, runs: int, best_runs: int) -> float:
    """P(the improvement is real), under normal noise of standard deviation ``sigma``."""
    if sigma <= 0:
        return 1.0 if improvement > 0 else 0.0
    se = sigma * math.sqrt(1 / max(runs, 1) + 1 / max(best_runs, 1))
    return statistics.NormalDist().cdf(improvement / se)


def judge(
    direction: str,
    runs: list[float],
    best: float | None,
    noise: Noise,
    *,
    best_runs: int = 1,
    max_reruns: int = 2,
) -> Verdict:
    """Decide on an experiment from its runs so far (the first, then any re-runs)."""
    score = statistics.fmean(runs)
    if best is None:
        return Verdict(KEEP, score, math.inf, 1.0)
    better = gain(direction, score, best)
    sure = confidence(better, noise.sigma, len(runs), best_runs)
    n, m = len(runs), max(best_runs, 1)
    floor = noise.floor * math.sqrt((1 / n + 1 / m) / (1 + 1 / m))
    if better <= 0:
        return Verdict(DISCARD, score, better, sure)
    if floor > 0 and floor / 2 < better <= 2 * floor and n <= max_reruns:
        return Verdict(RERUN, score, better, sure)
    return Verdict(KEEP if better > floor else DISCARD, score, better, sure)

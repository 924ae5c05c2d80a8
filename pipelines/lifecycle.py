"""Shadow -> promote -> probation -> rollback: the rules a :class:`~tiertwin.pipelines.models.ModelSlot` follows.

A newer version of a model does not go live on arrival. It runs in *shadow*: on every outcome the
live model and the candidate are scored on the same example (both predict the decision's own
features before either learns them: the pairs are exact), and the candidate learns the example too, as
the live model does. A verdict needs ``min_outcomes`` pairs:

* **promoted** when the candidate's mean absolute error is below the live one's by ``margin``
  (a fraction) *and* the paired t statistic of ``live error - candidate error`` is at least ``z``;
* **rejected** when it is worse with ``t <= -z``, or when ``max_outcomes`` pairs gave no verdict.

After a promotion the previous model stays warm (it keeps learning) for ``probation`` outcomes and is
scored against the new live model the same way; if the new one is worse by ``rollback_margin`` with
``t >= z``, the slot **rolls back** by itself. The shadow never decides: decisions come from the live
model only, so the decisions a worse candidate makes are none.

>>> score = PairedScore()
>>> for live_error, candidate_error in [(3.0, 1.0), (2.5, 1.2), (3.2, 0.9), (2.8, 1.1)]:
...     score.add(live_error, candidate_error)
>>> score.n, round(score.mean_a, 3), round(score.mean_b, 3), score.t() > 5
(4, 2.875, 1.05, True)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromotionPolicy:
    """When a shadow is promoted or rejected, and when a promotion is rolled back (see the module doc)."""

    min_outcomes: int = 200
    max_outcomes: int = 5_000
    margin: float = 0.05
    z: float = 2.0
    probation: int = 1_000
    rollback_margin: float = 0.05


@dataclass
class PairedScore:
    """Running paired errors: ``a`` (the live model's) and ``b`` (the other one's), Welford on ``a - b``."""

    n: int = 0
    mean_a: float = 0.0
    mean_b: float = 0.0
    mean_d: float = 0.0
    m2_d: float = 0.0

    def add(self, a: float, b: float) -> None:
        if not (math.isfinite(a) and math.isfinite(b)):
            return
        self.n += 1
        self.mean_a += (a - self.mean_a) / self.n
        self.mean_b += (b - self.mean_b) / self.n
        d = a - b
        delta = d - self.mean_d
        self.mean_d += delta / self.n
        self.m2_d += delta * (d - self.mean_d)

    def t(self) -> float:
        """Paired t statistic of ``a - b`` (positive: ``b`` has the smaller errors)."""
        if self.n < 2:
            return 0.0
        sd = math.sqrt(self.m2_d / (self.n - 1))
        if sd == 0.0:
            return 0.0 if self.mean_d == 0.0 else math.copysign(math.inf, self.mean_d)
        return self.mean_d / (sd / math.sqrt(self.n))

    def figures(self) -> dict[str, float]:
        return {"outcomes": float(self.n), "live_mae": self.mean_a, "other_mae": self.mean_b, "t": self.t()}


@dataclass
class Candidate:
    """A version beside the live model: a shadow before its promotion, the previous model after one."""

    model: Any
    version: int
    digest: str = ""
    revision: int = 0
    score: PairedScore = field(default_factory=PairedScore)
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000))


def shadow_verdict(score: PairedScore, policy: PromotionPolicy) -> str | None:
    """``"promoted"``, ``"rejected"`` or None (not yet) for a shadow; ``a`` = live errors, ``b`` = the shadow's."""
    if score.n < policy.min_outcomes:
        return None
    t = score.t()
    if score.mean_b < score.mean_a * (1 - policy.margin) and t >= policy.z:
        return "promoted"
    if (score.mean_b > score.mean_a and t <= -policy.z) or score.n >= policy.max_outcomes:
        return "rejected"
    return None


def probation_verdict(score: PairedScore, policy: PromotionPolicy) -> str | None:
    """``"rolled-back"``, ``"stable"`` or None for a promotion on probation; ``a`` = new live, ``b`` = previous."""
    if score.n >= policy.min_outcomes and score.mean_a > score.mean_b * (1 + policy.rollback_margin) \
            and score.t() >= policy.z:
        return "rolled-back"
    if score.n >= policy.probation:
        return "stable"
    return None


def error_of(model: Any, x: dict, y: float) -> float:
    """Absolute error of ``model`` on one example (NaN if it cannot predict)."""
    try:
        return abs(float(model.predict_one(x)) - float(y))
    except (TypeError, ValueError, KeyError, AttributeError):
        return math.nan

"""The edge twin's SINR forecaster: :class:`SinrForecaster`, learned at the horizon it is asked for.

It forecasts the *change* of a cell's SINR over ``x["horizon_s"]`` with a recursive least-squares
fit, one for the serving cell and one for the best neighbour (``x["neighbour"]``: the best of several
cells regresses down, the serving one does not), each for slow and for fast UEs (:data:`FAST_M`), (:class:`~tiertwin.pipelines.rls.RecursiveLeastSquares`) over the physics-shaped features of
:func:`~tiertwin.pipelines.features.sinr_forecast_features`. The prior is 0 change, so an untrained
forecaster is persistence and learning only adds what the data shows. The edge twin teaches it
with the SINR it sees ``horizon_s`` after the forecast (:class:`HorizonBuffer`), not the next
summary's: a model that learns 0.2 s steps and is asked for 0.5 s ahead is wrong by construction.

>>> from tiertwin.pipelines.features import sinr_forecast_features
>>> f = SinrForecaster()
>>> x = sinr_forecast_features(10.0, -4.0, 1.0, 0.5)
>>> f.predict_one(x)
10.0
>>> for _ in range(300):
...     f.learn_one(x, 8.0)
>>> round(f.predict_one(x), 1)
8.0
"""

from __future__ import annotations

from collections import deque
from typing import Mapping

from river import base

from tiertwin.pipelines.rls import RecursiveLeastSquares

FEATURES = ("trend_x_h", "speed_x_h", "sinr_db", "trend_db_per_s", "sinr_x_speed_h", "gap_x_speed_h", "bias",
            "geo_change_db", "geo_reversion_db")
ROLES = ("serving", "neighbour")
# A fit per role and mobility regime: a UE that moves more than FAST_M over the horizon (6 m/s at 0.5 s: vehicles)
# has its own, where the geometry drives the change; pooled with pedestrians (whose geometry terms are about 0), the
# highway's best-neighbour fit closed 43 % of the persistence-to-oracle gap frozen against 73 % trained alone.
FAST_M = 3.0
KEYS = ROLES + tuple(f"{role} fast" for role in ROLES)
# Weight of the newest absolute error in the guard's running MAEs (about 1000 labels): where the fit has lately
# done worse than persistence (a regime it was not trained for, e.g. summaries no longer smoothed), the
# forecaster falls back to persistence until the fit catches up. At 0.005 (200 labels) the guard switched on noise
# where the two are within 0.5 % (stadium-event's best neighbour: 0.2 % worse than persistence, prequential).
GUARD_DECAY = 0.001


class SinrForecaster(base.Regressor):
    """Forecast of a cell's SINR (dB) ``x["horizon_s"]`` ahead (see the module docstring).

    Parameters
    ----------
    forgetting
        RLS forgetting factor per example.
    horizon_s
        The horizon it is trained for (the edge twin's ``handover_horizon_s``); informative, the
        features carry the horizon of each forecast.
    """

    def __init__(self, forgetting: float = 0.9995, horizon_s: float = 0.5):
        self.forgetting = forgetting
        self.horizon_s = horizon_s
        # Innovations clipped at half the running MAE: close to a median fit, what a mean absolute error rewards
        # (SINR changes are heavy-tailed: a handover or a LOS switch moves the SINR by 10 dB or more).
        self._fits = {key: RecursiveLeastSquares(FEATURES, forgetting=forgetting, prior_variance=1.0, clip=0.5,
                                                 min_clip=0.1) for key in KEYS}
        self.n_learned = 0

    def released(self, forgetting: float = 0.9995) -> "SinrForecaster":
        """This forecaster ready to ship after pretraining (typically with ``forgetting`` 1): ``forgetting`` from now on."""
        self.forgetting = forgetting
        for fit in self._fits.values():
            fit.forgetting = forgetting
        self._guard = {key: [0.0, 0.0] for key in self._fits}
        return self

    def _role(self, x: Mapping) -> str:
        """The fit for ``x``: its role, and its regime where this forecaster has one (pickles from before do not)."""
        role = "neighbour" if x.get("neighbour", 0.0) > 0.5 else "serving"
        if x.get("speed_x_h", 0.0) > FAST_M and f"{role} fast" in self._fits:
            return f"{role} fast"
        return role

    def learn_one(self, x: dict, y: float) -> None:
        role = self._role(x)
        change = float(y) - float(x["sinr_db"])
        guard = self._guards()[role]
        fit = self._fits[role]
        phi = fit.vector(x)     # once for the guard's prediction and the step (the same numbers as predict(x))
        guard[0] += GUARD_DECAY * (abs(fit.predict_vector(phi) - change) - guard[0])
        guard[1] += GUARD_DECAY * (abs(change) - guard[1])
        fit.learn_vector(phi, change)
        self.n_learned += 1

    def predict_one(self, x: dict) -> float:
        role = self._role(x)
        guard = self._guards()[role]
        if guard[0] > guard[1]:     # persistence has been doing better lately: say so, forecast it
            return float(x["sinr_db"])
        return float(x["sinr_db"]) + self._fits[role].predict(x)

    def _guards(self) -> dict[str, list[float]]:
        """Per role, [running MAE of the fit, of persistence] on the labels learned (pickles from before lack it)."""
        guards = self.__dict__.get("_guard")
        if guards is None:
            guards = self._guard = {key: [0.0, 0.0] for key in self._fits}
        return guards

    def coefficients(self, role: str = "serving") -> dict[str, float]:
        return self._fits[role].coefficients()


class HorizonBuffer:
    """Forecast features waiting for the SINR ``horizon_s`` later, which is their label.

    ``push(t_ms, x)`` keeps the features of a forecast made at ``t_ms``; ``due(t_ms)`` returns
    ``(t_ms, x)`` of those whose horizon has come (at least ``horizon_s``, at most ``horizon_s + slack_s`` old: an older one
    would teach a longer horizon and is dropped).

    >>> b = HorizonBuffer(0.5)
    >>> b.push(0, {"sinr_db": 1.0}); b.push(200, {"sinr_db": 2.0})
    >>> b.due(400), b.due(600)
    ([], [(0, {'sinr_db': 1.0})])
    >>> b.due(1_000)        # 800 ms old: beyond 0.5 s + 0.2 s of slack, dropped
    []
    """

    def __init__(self, horizon_s: float, slack_s: float = 0.2, maxlen: int = 64):
        self.horizon_ms = horizon_s * 1000.0
        self.slack_ms = slack_s * 1000.0
        self.waiting: deque[tuple[float, Mapping]] = deque(maxlen=maxlen)

    def push(self, t_ms: float, x: Mapping) -> None:
        self.waiting.append((t_ms, x))

    def due(self, t_ms: float) -> list[tuple[float, Mapping]]:
        out = []
        while self.waiting and t_ms - self.waiting[0][0] >= self.horizon_ms:
            t0, x = self.waiting.popleft()
            if t_ms - t0 <= self.horizon_ms + self.slack_ms:
                out.append((t0, x))
        return out

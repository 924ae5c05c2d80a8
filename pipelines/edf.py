"""Earliest-deadline-first on the device: the one ordering rule the local twin and the simulated device share.

The local twin predicts how long a demand placed on the device waits behind other
local work (its ``EdfQueue``); the simulator's device then runs that work. Both order
it with :func:`edf_key`, so what the twin predicts is what the device does.

Time-critical demands (priority at or above ``critical_priority``) are keyed by their
absolute deadline; the others go behind every critical demand, in arrival order.

>>> xr = edf_key(ts_ms=1_000, deadline_ms=20.0, priority=6)
>>> bulk = edf_key(ts_ms=990, deadline_ms=2_000.0, priority=2)
>>> xr, xr < bulk, bulk < edf_key(ts_ms=995, deadline_ms=100.0, priority=4)
(1020.0, True, True)
"""

from __future__ import annotations

CRITICAL_PRIORITY = 5                # the default of the local twin's ``critical_priority``
NOT_CRITICAL_OFFSET_MS = 1e9         # ~11.6 days: behind any real deadline, still ordered by arrival


def edf_key(ts_ms: float, deadline_ms: float, priority: int, critical_priority: int = CRITICAL_PRIORITY) -> float:
    """Where a demand arriving at ``ts_ms`` goes in the device's EDF queue (smaller runs first)."""
    if priority >= critical_priority:
        return float(ts_ms) + float(deadline_ms)
    return float(ts_ms) + NOT_CRITICAL_OFFSET_MS

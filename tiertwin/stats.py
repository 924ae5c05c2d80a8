"""One percentile for every benchmark, report and view, so their p99s can be compared.

The definition, stated once: numpy's default **linear interpolation** between closest ranks
(``numpy.percentile(values, q, method="linear")``, the same as polars'
``quantile(q / 100, "linear")``). For sorted values ``v[0..n-1]`` the ``q`` percentile sits at rank
``h = (n - 1) * q / 100`` and is ``v[floor(h)] + (h - floor(h)) * (v[floor(h) + 1] - v[floor(h)])``.
An empty sample has no percentile: NaN.

>>> percentile([4.0, 1.0, 3.0, 2.0], 50)
2.5
>>> round(percentile([4.0, 1.0, 3.0, 2.0], 99), 2)
3.97
>>> summary_ms([4.0, 1.0, 3.0, 2.0])["p90"]
3.7
>>> summary_ms([])["n"], summary_ms([])["p99"]
(0, nan)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import polars as pl

#: The percentiles :func:`summary_ms` reports, with their keys.
SUMMARY_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


def _array(values: Iterable[float]) -> np.ndarray:
    return np.asarray(values if isinstance(values, (np.ndarray, Sequence)) else list(values), dtype=float)


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` percentile (0..100) of ``values``, linear interpolation (module docstring); NaN if empty."""
    a = _array(values)
    return float(np.percentile(a, q)) if a.size else float("nan")


def percentiles(values: Iterable[float], qs: Sequence[float]) -> list[float]:
    """Several percentiles (0..100) of one sample in one pass; NaNs if empty.

    >>> percentiles([1.0, 2.0, 3.0, 4.0, 5.0], [50, 90])
    [3.0, 4.6]
    """
    a = _array(values)
    return [float(v) for v in np.percentile(a, list(qs))] if a.size else [float("nan")] * len(qs)


def summary_ms(values: Iterable[float]) -> dict[str, float]:
    """n, mean, p50, p90, p99, p99.9 and max of a latency sample (same unit in, same unit out).

    NaN (and ``n`` 0) when empty.

    >>> summary_ms([1.0, 2.0, 3.0, 4.0, 5.0])
    {'n': 5, 'mean': 3.0, 'p50': 3.0, 'p90': 4.6, 'p99': 4.96, 'p99.9': 4.996, 'max': 5.0}
    """
    a = _array(values)
    if not a.size:
        return {"n": 0, "mean": float("nan"), **{k: float("nan") for k in SUMMARY_PERCENTILES}, "max": float("nan")}
    ps = np.percentile(a, list(SUMMARY_PERCENTILES.values())).tolist()
    return {"n": int(a.size), "mean": float(a.mean()), **dict(zip(SUMMARY_PERCENTILES, ps)), "max": float(a.max())}


def percentile_expr(column: str, q: float) -> pl.Expr:
    """The ``q`` percentile (0..100) of a polars column by the same definition (polars' ``linear``), for
    ``select`` / ``group_by().agg``; named ``p{q}_ms`` by the caller.

    >>> import polars as pl
    >>> frame = pl.DataFrame({"ms": [4.0, 1.0, 3.0, 2.0]})
    >>> round(frame.select(percentile_expr("ms", 99)).item(), 9) == round(percentile(frame["ms"], 99), 9)
    True
    """
    import polars as pl

    return pl.col(column).quantile(q / 100, "linear")

"""What a base station knows of the radio around it: :class:`RadioGeometry`, and the physics-shaped SINR features it gives.

An edge twin runs at a gNB site. It knows where its own and its neighbours' sites are, how their sectors
point, their mast height and the 3GPP channel model they were planned with (TR 38.901 path loss and LOS
probability, the shadowing's decorrelation distance). From a UE's position and velocity it can then tell
the *deterministic* part of the UE's SINR on any cell, now and a horizon ahead:

* ``geo_change_db``: the SINR change over the horizon that the distance and bearing change alone make
  (path loss averaged over the LOS probability, the sector's gain, the other cells' interference at
  their present loads). Driving past a mast turns the UE from a sector's boresight to its back: tens of dB
  in a second, all of it geometry.
* ``geo_reversion_db``: how far the SINR now is above the deterministic value (the shadowing and LOS state
  the UE is in), times the share of it the AR(1) shadowing forgets over the distance moved,
  ``1 - exp(-d / d_corr)``: the mean reversion an oracle with the simulator's state would expect.

What stays unknown to the edge (the shadowing of each site separately, the LOS state, the fresh part of the
shadowing along the path) is what keeps a forecaster from this geometry below the oracle.

The geometry comes from the simulator scenario the edge is deployed in (``EdgeTwinConfig.scenario``)::

    >>> from tiertwin.connectors.simulator.scenarios import Scenario
    >>> g = RadioGeometry.from_scenario(Scenario())
    >>> g.n_cells, g.decorrelation_m
    (21, 10.0)
    >>> x = g.features((50.0, 0.0), (10.0, 0.0), 0.5, [(0, 12.0)])[0]
    >>> sorted(x), x["geo_change_db"] < 0            # driving away from site 0 along its sector's boresight
    (['geo_change_db', 'geo_reversion_db'], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from tiertwin.connectors.simulator import radio

GEOMETRY_FEATURES = ("geo_change_db", "geo_reversion_db")


@dataclass(frozen=True, eq=False)
class RadioGeometry:
    """Site positions, sector boresights and the radio model of a network (see the module docstring)."""

    site_xy: np.ndarray            # (S, 2) metres
    cell_site: np.ndarray          # (C,) site of each cell
    cell_azimuth_rad: np.ndarray   # (C,) boresight, NaN for omni cells
    bs_height_m: float
    ue_height_m: float
    model: str                     # "UMa" | "UMi"
    los_model: str                 # "38.901" | "always" | "never"
    carrier_ghz: float
    tx_power_dbm: float
    antenna_gain_dbi: float
    beamwidth_deg: float
    front_to_back_db: float
    noise_mw: float
    idle_load: float
    decorrelation_m: float

    @classmethod
    def from_scenario(cls, scenario) -> "RadioGeometry":
        """The geometry of a :class:`~tiertwin.connectors.simulator.scenarios.Scenario` (or a preset name / YAML path)."""
        from tiertwin.connectors.simulator.layout import Layout
        from tiertwin.connectors.simulator.scenarios import load_scenario

        if isinstance(scenario, str):
            scenario = load_scenario(scenario)
        layout, r = Layout.hexagonal(scenario.layout), scenario.radio
        noise_mw = float(radio.dbm_to_mw(radio.noise_dbm(r.bandwidth_mhz * 1e6, r.noise_figure_db)))
        return cls(layout.site_xy, layout.cell_site, layout.cell_azimuth_rad, layout.bs_height_m, r.ue_height_m,
                   r.model, r.los_model, r.carrier_ghz, r.tx_power_dbm, r.antenna_gain_dbi, r.beamwidth_deg,
                   r.front_to_back_db, noise_mw, r.idle_load, r.decorrelation_m if r.shadowing else math.inf)

    @property
    def n_cells(self) -> int:
        return len(self.cell_site)

    def loads(self, prb_utilization: Mapping[int, float]) -> np.ndarray:
        """Each cell's radiated load (its PRB utilisation, at least the idle load); a cell with no report: the
        mean of those known (0.5 if none)."""
        known = [float(v) for c, v in prb_utilization.items() if 0 <= c < self.n_cells]
        out = np.full(self.n_cells, float(np.mean(known)) if known else 0.5)
        for c, v in prb_utilization.items():
            if 0 <= c < self.n_cells:
                out[c] = v
        return np.maximum(out, self.idle_load)

    def mean_sinr_db(self, xy: np.ndarray, loads: np.ndarray | None = None) -> np.ndarray:
        """(P, C) deterministic SINR at the points ``xy`` (P, 2): path loss averaged (dB) over the LOS probability,
        no shadowing; ``loads`` per cell (default: all at 0.5)."""
        xy = np.atleast_2d(np.asarray(xy, dtype=float))
        dx = xy[:, None, 0] - self.site_xy[None, :, 0]
        dy = xy[:, None, 1] - self.site_xy[None, :, 1]
        d2d = np.maximum(np.hypot(dx, dy), 10.0)
        d3d = np.sqrt(d2d ** 2 + (self.bs_height_m - self.ue_height_m) ** 2)
        args = (d2d, d3d, self.carrier_ghz, self.bs_height_m, self.ue_height_m)
        los_pl = radio.PATHLOSS[(self.model, True)](*args)
        nlos_pl = radio.PATHLOSS[(self.model, False)](*args, los_pl=los_pl)
        if self.los_model == "38.901":
            p = radio.los_probability(d2d, self.model, self.ue_height_m)
        else:
            p = 1.0 if self.los_model == "always" else 0.0
        site_loss = (p * los_pl + (1.0 - p) * nlos_pl)[:, self.cell_site]
        gain = radio.cell_gain_db(dx, dy, self.cell_site, self.cell_azimuth_rad, self.antenna_gain_dbi,
                                  self.beamwidth_deg, self.front_to_back_db)
        rx = self.tx_power_dbm + gain - site_loss
        return radio.sinr_matrix_db(rx, np.full(self.n_cells, 0.5) if loads is None else loads, self.noise_mw)

    def features(self, xy: Sequence[float], velocity: Sequence[float], horizon_s: float,
                 cells: Iterable[tuple[int, float]], loads: np.ndarray | None = None) -> list[dict[str, float]]:
        """For each ``(cell, SINR now)``: ``geo_change_db`` and ``geo_reversion_db`` (module docstring) of a UE at
        ``xy`` moving at ``velocity`` (m/s, east and north) over ``horizon_s``. A cell outside the layout: zeros."""
        vx, vy = float(velocity[0]), float(velocity[1])
        moved = math.hypot(vx, vy) * horizon_s
        points = np.array([[xy[0], xy[1]], [xy[0] + vx * horizon_s, xy[1] + vy * horizon_s]])
        sinr = np.clip(self.mean_sinr_db(points, loads), -30.0, 50.0)
        forget = 1.0 - math.exp(-moved / self.decorrelation_m)
        out = []
        for cell, now_db in cells:
            if not 0 <= cell < self.n_cells:
                out.append({k: 0.0 for k in GEOMETRY_FEATURES})
                continue
            now_det, later_det = float(sinr[0, cell]), float(sinr[1, cell])
            out.append({"geo_change_db": later_det - now_det, "geo_reversion_db": (now_db - now_det) * forget})
        return out

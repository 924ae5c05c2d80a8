"""The SINR oracle: the best forecast any twin could make of a cell's SINR a horizon ahead.

It reads the simulator's own state and model (the UE's position, speed, heading and waypoint; the
TR 38.901 path loss; the shadowing's AR(1) state and decorrelation distance; the LOS process) and
returns the **conditional mean** of the future SINR (dB) given the present, by Monte Carlo over
what is random from here on:

* motion over the horizon: straight on at the current speed and heading (a random-waypoint walker
  stops at its waypoint, a paused one stays, a highway lane wraps around), the mean of the
  Gauss-Markov models;
* the deterministic path-loss and antenna-gain change at the new position;
* shadowing: over a path of length ``d`` the AR(1) state keeps ``rho = exp(-d / d_corr)`` of itself
  and draws ``sqrt(1 - rho^2)`` fresh (what ``World`` does step by step, composed);
* LOS state: kept with probability ``exp(-d / d_los)``, else redrawn against the LOS probability
  at the new distance.

Cell loads (interference) are held at their present values. What stays unknown (the fresh part of
the shadowing, LOS switches) is the physical limit of forecasting here.

>>> from tiertwin.connectors.simulator.scenarios import Scenario
>>> from tiertwin.connectors.simulator.world import World
>>> world = World(Scenario(ues=5), seed=3)
>>> _ = world.step()
>>> now = sinr_oracle(world, [0, 1], [int(world.serving[0]), int(world.serving[1])], 0.0, draws=4)
>>> bool(np.allclose(now, np.clip(world.sinr_db[:2], -30, 50)))
True
"""

from __future__ import annotations

import numpy as np

from tiertwin.connectors.simulator import radio
from tiertwin.connectors.simulator.mobility import MODELS

_RWP, _HIGHWAY = MODELS.index("random_waypoint"), MODELS.index("highway")


def future_positions(world, ues: np.ndarray, horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
    """``(xy, moved)``: where the UEs are expected ``horizon_s`` from now and how far they go."""
    m = world.mobility
    xy = m.xy[ues].copy()
    step = m.speed[ues] * horizon_s
    heading = m.heading[ues]
    delta = np.column_stack([np.cos(heading), np.sin(heading)]) * step[:, None]
    rwp = m.model[ues] == _RWP
    if rwp.any():   # towards the waypoint, stopping there; a paused walker stays
        to_wp = m.waypoint[ues[rwp]] - xy[rwp]
        dist = np.hypot(to_wp[:, 0], to_wp[:, 1])
        go = np.minimum(step[rwp], dist) * (m.pause_left[ues[rwp]] <= 0)
        delta[rwp] = to_wp * (go / np.maximum(dist, 1e-9))[:, None]
    moved = np.hypot(delta[:, 0], delta[:, 1])
    xy += delta
    highway = m.model[ues] == _HIGHWAY
    if highway.any():
        start = m.centre[ues[highway], 0] - m.radius[ues[highway]]
        xy[highway, 0] = start + np.mod(xy[highway, 0] - start, 2.0 * m.radius[ues[highway]])
    return xy, moved


def sinr_oracle(world, ues, cells, horizon_s: float, draws: int = 32,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Conditional mean SINR (dB, clipped to the telemetry range) of UE ``ues[i]`` on cell ``cells[i]``,
    ``horizon_s`` from now (see the module docstring)."""
    ues, cells = np.asarray(ues, dtype=int), np.asarray(cells, dtype=int)
    if not ues.size:
        return np.zeros(0)
    rng = rng if rng is not None else np.random.default_rng(0)
    r, layout = world.scenario.radio, world.layout
    xy, moved = future_positions(world, ues, horizon_s)
    dx = xy[:, None, 0] - layout.site_xy[None, :, 0]
    dy = xy[:, None, 1] - layout.site_xy[None, :, 1]
    d2d = np.maximum(np.hypot(dx, dy), 10.0)
    d3d = np.sqrt(d2d ** 2 + (layout.bs_height_m - r.ue_height_m) ** 2)
    shape = (draws,) + d2d.shape
    rho = np.exp(-moved / r.decorrelation_m)[None, :, None]
    keep_los = np.exp(-moved / r.los_decorrelation_m)[None, :, None]
    z = world.shadow_z[ues][None]
    if r.shadowing:
        z = rho * z + np.sqrt(1.0 - rho ** 2) * rng.standard_normal(shape)
    u = np.where(rng.random(shape) > keep_los, rng.random(shape), world.los_u[ues][None])
    if r.los_model == "38.901":
        los = u < radio.los_probability(d2d, r.model, r.ue_height_m)[None]
    else:
        los = np.full(shape, r.los_model == "always")
    args = (d2d, d3d, r.carrier_ghz, layout.bs_height_m, r.ue_height_m)
    los_pl = radio.PATHLOSS[(r.model, True)](*args)
    nlos_pl = radio.PATHLOSS[(r.model, False)](*args, los_pl=los_pl)
    pl = np.where(los, los_pl[None], nlos_pl[None])
    if r.shadowing:
        pl = pl + np.where(los, r.shadow_sigma_los_db, r.shadow_sigma_nlos_db) * z
    site_loss = pl[:, :, layout.cell_site]
    gain = radio.cell_gain_db(dx, dy, layout.cell_site, layout.cell_azimuth_rad, r.antenna_gain_dbi,   # UE x cell,
                              r.beamwidth_deg, r.front_to_back_db)                                     # broadcast over draws
    rx = (r.tx_power_dbm + gain - site_loss).reshape(-1, layout.n_cells)
    sinr = radio.sinr_matrix_db(rx, world.cell_load, world.noise_mw).reshape(draws, len(ues), layout.n_cells)
    picked = np.clip(sinr[:, np.arange(len(ues)), cells], -30.0, 50.0)
    return picked.mean(axis=0)

"""UE movement, vectorized over UEs: random waypoint, Gauss-Markov, highway lanes and straight lines.

Each UE belongs to one :class:`~tiertwin.connectors.simulator.scenarios.UEGroup`
(pedestrians or vehicles) and moves inside the group's disc (default: the layout).

* ``random_waypoint``: walk at a uniform speed to a uniform point of the disc, pause, repeat.
* ``gauss_markov``: speed and heading follow AR(1) processes with memory ``alpha`` per second
  around their means; near the border the mean heading turns towards the centre.
* ``highway``: lanes along the x axis (alternating directions), Gauss-Markov speed, wrap around.
* ``linear``: constant speed and heading (scripted tests, drive-by runs).

>>> import numpy as np
>>> from tiertwin.connectors.simulator.scenarios import UEGroup
>>> rng = np.random.default_rng(1)
>>> m = Mobility.from_groups([UEGroup(model="linear", speed_mps=(2.0, 2.0))], 3, 500.0, rng)
>>> m.heading[:] = 0.0; m.xy[:] = 0.0
>>> moved = m.step(1.0, rng)
>>> m.xy[0].tolist(), moved.tolist()
([2.0, 0.0], [2.0, 2.0, 2.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiertwin.connectors.simulator.scenarios import UEGroup

MODELS = ("random_waypoint", "gauss_markov", "highway", "linear")


def _uniform_in_disc(rng: np.random.Generator, centre: np.ndarray, radius: np.ndarray) -> np.ndarray:
    r = radius * np.sqrt(rng.random(len(radius)))
    a = rng.random(len(radius)) * 2.0 * np.pi
    return centre + np.column_stack([r * np.cos(a), r * np.sin(a)])


@dataclass
class Mobility:
    xy: np.ndarray          # (N, 2) position, metres
    speed: np.ndarray       # (N,) m/s
    heading: np.ndarray     # (N,) radians, counter-clockwise from east
    model: np.ndarray       # (N,) index into MODELS
    is_vehicle: np.ndarray  # (N,) bool
    speed_lo: np.ndarray
    speed_hi: np.ndarray
    pause_lo: np.ndarray
    pause_hi: np.ndarray
    memory: np.ndarray
    centre: np.ndarray      # (N, 2)
    radius: np.ndarray      # (N,)
    waypoint: np.ndarray    # (N, 2)
    pause_left: np.ndarray  # (N,) s
    mean_speed: np.ndarray
    mean_heading: np.ndarray

    @classmethod
    def from_groups(cls, groups: list[UEGroup], n: int, area_radius_m: float,
                    rng: np.random.Generator) -> "Mobility":
        shares = np.array([g.share for g in groups], dtype=float)
        counts = np.floor(shares / shares.sum() * n).astype(int)
        counts[: n - counts.sum()] += 1  # hand the remainder to the first groups
        group = np.repeat(np.arange(len(groups)), counts)
        pick = lambda f: np.array([f(groups[g]) for g in range(len(groups))], dtype=float)[group]
        centre = np.column_stack([pick(lambda g: (g.centre_m or (0.0, 0.0))[0]),
                                  pick(lambda g: (g.centre_m or (0.0, 0.0))[1])])
        radius = pick(lambda g: g.radius_m or area_radius_m)
        speed_lo, speed_hi = pick(lambda g: g.speed_mps[0]), pick(lambda g: g.speed_mps[1])
        model = pick(lambda g: MODELS.index(g.model)).astype(int)
        xy = _uniform_in_disc(rng, centre, radius)
        speed = speed_lo + (speed_hi - speed_lo) * rng.random(n)
        heading = rng.random(n) * 2.0 * np.pi
        highway = model == MODELS.index("highway")
        if highway.any():
            lanes, spacing = pick(lambda g: g.lanes), pick(lambda g: g.lane_spacing_m)
            lane = np.floor(rng.random(n) * lanes)
            xy[highway, 1] = centre[highway, 1] + ((lane - (lanes - 1) / 2.0) * spacing)[highway]
            xy[highway, 0] = centre[highway, 0] + (rng.random(n) * 2.0 - 1.0)[highway] * radius[highway]
            heading[highway] = np.where(lane[highway] % 2 == 0, 0.0, np.pi)
        return cls(xy=xy, speed=speed, heading=heading, model=model,
                   is_vehicle=pick(lambda g: g.kind == "vehicle").astype(bool),
                   speed_lo=speed_lo, speed_hi=speed_hi,
                   pause_lo=pick(lambda g: g.pause_s[0]), pause_hi=pick(lambda g: g.pause_s[1]),
                   memory=pick(lambda g: g.memory), centre=centre, radius=radius,
                   waypoint=_uniform_in_disc(rng, centre, radius), pause_left=np.zeros(n),
                   mean_speed=(speed_lo + speed_hi) / 2.0, mean_heading=heading.copy())

    def step(self, dt_s: float, rng: np.random.Generator) -> np.ndarray:
        """Advance every UE by ``dt_s``; return the distance each one moved (metres)."""
        n = len(self.speed)
        noise = rng.standard_normal((2, n))  # drawn for all UEs so the stream does not depend on models
        moved = np.zeros(n)
        rwp = self.model == 0
        if rwp.any():
            moved[rwp] = self._random_waypoint(rwp, dt_s, rng)
        markov = (self.model == 1) | (self.model == 2)
        if markov.any():
            self._gauss_markov(markov, dt_s, noise)
        straight = ~rwp
        step = self.speed * dt_s
        self.xy[straight, 0] += (step * np.cos(self.heading))[straight]
        self.xy[straight, 1] += (step * np.sin(self.heading))[straight]
        moved[straight] = step[straight]
        self._keep_inside(dt_s)
        return moved

    def _random_waypoint(self, mask: np.ndarray, dt_s: float, rng: np.random.Generator) -> np.ndarray:
        paused = mask & (self.pause_left > 0)
        self.pause_left[paused] = np.maximum(self.pause_left[paused] - dt_s, 0.0)
        walking = mask & ~paused
        delta = self.waypoint[walking] - self.xy[walking]
        dist = np.hypot(delta[:, 0], delta[:, 1])
        step = self.speed[walking] * dt_s
        arrive = dist <= step
        frac = np.where(arrive, 1.0, step / np.maximum(dist, 1e-9))
        self.xy[walking] += delta * frac[:, None]
        self.heading[walking] = np.where(dist > 1e-9, np.arctan2(delta[:, 1], delta[:, 0]), self.heading[walking])
        moved = np.zeros(len(mask))
        moved[walking] = np.minimum(dist, step)
        self.speed[paused] = 0.0
        arrived = np.flatnonzero(walking)[arrive]
        if arrived.size:
            self.waypoint[arrived] = _uniform_in_disc(rng, self.centre[arrived], self.radius[arrived])
            lo, hi = self.speed_lo[arrived], self.speed_hi[arrived]
            self.speed[arrived] = lo + (hi - lo) * rng.random(arrived.size)
            plo, phi = self.pause_lo[arrived], self.pause_hi[arrived]
            self.pause_left[arrived] = plo + (phi - plo) * rng.random(arrived.size)
        resumed = paused & (self.pause_left <= 0)
        if resumed.any():
            lo, hi = self.speed_lo[resumed], self.speed_hi[resumed]
            self.speed[resumed] = lo + (hi - lo) * rng.random(int(resumed.sum()))
        return moved[mask]

    def _gauss_markov(self, mask: np.ndarray, dt_s: float, noise: np.ndarray) -> None:
        alpha = self.memory[mask] ** dt_s
        keep = np.sqrt(np.maximum(1.0 - alpha ** 2, 0.0))
        sigma_speed = (self.speed_hi[mask] - self.speed_lo[mask]) / 4.0
        self.speed[mask] = np.clip(alpha * self.speed[mask] + (1 - alpha) * self.mean_speed[mask]
                                   + keep * sigma_speed * noise[0, mask], self.speed_lo[mask], self.speed_hi[mask])
        free = mask & (self.model == 1)
        if free.any():
            offset = self.xy[free] - self.centre[free]
            near_edge = np.hypot(offset[:, 0], offset[:, 1]) > 0.8 * self.radius[free]
            inward = np.arctan2(-offset[:, 1], -offset[:, 0])
            self.mean_heading[free] = np.where(near_edge, inward, self.mean_heading[free])
            a = self.memory[free] ** dt_s
            # steer along the shortest arc towards the mean heading
            gap = (self.mean_heading[free] - self.heading[free] + np.pi) % (2 * np.pi) - np.pi
            self.heading[free] = (self.heading[free] + (1 - a) * gap
                                  + np.sqrt(np.maximum(1 - a ** 2, 0.0)) * 0.5 * noise[1, free])

    def _keep_inside(self, dt_s: float) -> None:
        highway = self.model == 2
        if highway.any():
            span = 2.0 * self.radius[highway]
            start = self.centre[highway, 0] - self.radius[highway]
            self.xy[highway, 0] = start + np.mod(self.xy[highway, 0] - start, span)
        bounded = self.model == 1
        if bounded.any():
            offset = self.xy[bounded] - self.centre[bounded]
            dist = np.hypot(offset[:, 0], offset[:, 1])
            out = dist > self.radius[bounded]
            if out.any():
                scale = np.where(out, self.radius[bounded] / np.maximum(dist, 1e-9), 1.0)
                self.xy[bounded] = self.centre[bounded] + offset * scale[:, None]
                self.heading[bounded] = np.where(out, self.heading[bounded] + np.pi, self.heading[bounded])

    def heading_deg_from_north(self) -> np.ndarray:
        """Direction of travel clockwise from north, in [0, 360)."""
        return np.mod(90.0 - np.degrees(self.heading), 360.0)

"""Where the gNB sites and their cells are: a hexagonal grid, sectored or omni.

Site 0 is at the origin; sites are numbered ring by ring, counter-clockwise.
A sectored site has 3 cells pointing 120 degrees apart (cell ``3*s + k``); an
omni site has one cell with the site's id.

>>> from tiertwin.connectors.simulator.scenarios import LayoutConfig
>>> layout = Layout.hexagonal(LayoutConfig(rings=1, isd_m=200.0, sectored=True))
>>> layout.n_sites, layout.n_cells
(7, 21)
>>> [round(float(v), 1) for v in layout.site_xy[1]]
[200.0, 0.0]
>>> len({tuple(xy) for xy in Layout.hexagonal(LayoutConfig(rings=2)).site_xy.round(3).tolist()})
19
>>> layout.cell_site[:6].tolist()
[0, 0, 0, 1, 1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiertwin.connectors.simulator.scenarios import LayoutConfig

SECTOR_AZIMUTHS_DEG = (30.0, 150.0, 270.0)  # math convention: counter-clockwise from east


def hex_ring_coordinates(rings: int) -> list[tuple[int, int]]:
    """Axial (q, r) coordinates of every hexagon within ``rings`` of the origin, ring by ring."""
    cells = [(0, 0)]
    walk = [(-1, 1), (-1, 0), (0, -1), (1, -1), (1, 0), (0, 1)]  # counter-clockwise from the east corner
    for ring in range(1, rings + 1):
        q, r = ring, 0
        for dq, dr in walk:
            for _ in range(ring):
                cells.append((q, r))
                q, r = q + dq, r + dr
    return cells


@dataclass(frozen=True)
class Layout:
    site_xy: np.ndarray        # (S, 2) metres
    cell_site: np.ndarray      # (C,) site index of each cell
    cell_azimuth_rad: np.ndarray  # (C,) boresight, NaN for omni cells
    bs_height_m: float
    area_radius_m: float       # UEs roam inside this disc around the origin

    @property
    def n_sites(self) -> int:
        return len(self.site_xy)

    @property
    def n_cells(self) -> int:
        return len(self.cell_site)

    @property
    def cells_per_site(self) -> np.ndarray:
        return np.bincount(self.cell_site, minlength=self.n_sites)

    @classmethod
    def hexagonal(cls, config: LayoutConfig) -> "Layout":
        axial = np.array(hex_ring_coordinates(config.rings), dtype=float)
        q, r = axial[:, 0], axial[:, 1]
        site_xy = np.column_stack([config.isd_m * (q + r / 2.0), config.isd_m * r * np.sqrt(3.0) / 2.0])
        if config.sectored:
            cell_site = np.repeat(np.arange(len(site_xy)), 3)
            azimuth = np.tile(np.radians(SECTOR_AZIMUTHS_DEG), len(site_xy))
        else:
            cell_site = np.arange(len(site_xy))
            azimuth = np.full(len(site_xy), np.nan)
        radius = config.isd_m * (config.rings + 0.5)
        return cls(site_xy, cell_site, azimuth, config.bs_height_m, radius)

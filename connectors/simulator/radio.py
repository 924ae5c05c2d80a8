"""Radio physics, vectorized: 3GPP TR 38.901 path loss, LOS probability, shadowing, SINR, CQI, throughput.

All functions take numpy arrays (or scalars) and broadcast. Distances in metres,
carrier frequency ``fc`` in GHz, powers in dBm, gains and losses in dB.

Path loss (TR 38.901 Table 7.4.1-1), with the breakpoint distance
``d'BP = 4 h'BS h'UT fc[Hz] / c`` and effective heights ``h' = h - 1 m``
(for UMa, ``hE = 1 m`` holds exactly for UE heights up to 13 m, where C(d2D, hUT) = 0;
taller UEs keep ``hE = 1 m`` here, a simplification)::

    >>> round(float(pathloss_umi_los(100.0, 100.0, 3.5, 10.0, 1.5)), 2)
    85.28
    >>> round(float(pathloss_uma_nlos(300.0, 300.0, 3.5, 25.0, 1.5)), 2)
    121.23
    >>> float(los_probability(10.0, "UMi"))
    1.0

SINR, CQI (38.214 Table 5.2.2.1-2 efficiencies) and throughput::

    >>> cqi_from_sinr(np.array([-10.0, 5.0, 25.0])).tolist()   # log2(1 + 10^0.5) = 2.06 >= CQI 8's 1.9141
    [0, 8, 15]
    >>> round(float(spectral_efficiency(20.0, 0.75, 7.4)), 3)
    4.994
"""

from __future__ import annotations

import numpy as np

SPEED_OF_LIGHT = 299_792_458.0
THERMAL_NOISE_DBM_PER_HZ = -174.0

# 38.214 Table 5.2.2.1-2 (CQI table 1): spectral efficiency of CQI 1..15, bit/s/Hz.
CQI_EFFICIENCY = np.array([0.1523, 0.2344, 0.3770, 0.6016, 0.8770, 1.1758, 1.4766, 1.9141,
                           2.4063, 2.7305, 3.3223, 3.9023, 4.5234, 5.1152, 5.5547])


def breakpoint_distance_m(h_bs: float, h_ut: float, fc_ghz: float, h_e: float = 1.0):
    """``d'BP = 4 (hBS - hE)(hUT - hE) fc / c`` with fc in Hz."""
    return 4.0 * (h_bs - h_e) * (h_ut - h_e) * fc_ghz * 1e9 / SPEED_OF_LIGHT


def pathloss_uma_los(d2d, d3d, fc_ghz: float, h_bs: float, h_ut: float):
    """UMa LOS: PL1 below the breakpoint, PL2 beyond it."""
    d_bp = breakpoint_distance_m(h_bs, h_ut, fc_ghz)
    pl1 = 28.0 + 22.0 * np.log10(d3d) + 20.0 * np.log10(fc_ghz)
    pl2 = (28.0 + 40.0 * np.log10(d3d) + 20.0 * np.log10(fc_ghz)
           - 9.0 * np.log10(d_bp ** 2 + (h_bs - h_ut) ** 2))
    return np.where(np.asarray(d2d) < d_bp, pl1, pl2)


def pathloss_uma_nlos(d2d, d3d, fc_ghz: float, h_bs: float, h_ut: float, los_pl=None):
    """UMa NLOS: ``max(PL_LOS, 13.54 + 39.08 log10 d3D + 20 log10 fc - 0.6 (hUT - 1.5))``.

    Pass ``los_pl`` when the LOS path loss of the same geometry is already computed.
    """
    nlos = 13.54 + 39.08 * np.log10(d3d) + 20.0 * np.log10(fc_ghz) - 0.6 * (h_ut - 1.5)
    return np.maximum(pathloss_uma_los(d2d, d3d, fc_ghz, h_bs, h_ut) if los_pl is None else los_pl, nlos)


def pathloss_umi_los(d2d, d3d, fc_ghz: float, h_bs: float, h_ut: float):
    """UMi street canyon LOS."""
    d_bp = breakpoint_distance_m(h_bs, h_ut, fc_ghz)
    pl1 = 32.4 + 21.0 * np.log10(d3d) + 20.0 * np.log10(fc_ghz)
    pl2 = (32.4 + 40.0 * np.log10(d3d) + 20.0 * np.log10(fc_ghz)
           - 9.5 * np.log10(d_bp ** 2 + (h_bs - h_ut) ** 2))
    return np.where(np.asarray(d2d) < d_bp, pl1, pl2)


def pathloss_umi_nlos(d2d, d3d, fc_ghz: float, h_bs: float, h_ut: float, los_pl=None):
    """UMi NLOS: ``max(PL_LOS, 22.4 + 35.3 log10 d3D + 21.3 log10 fc - 0.3 (hUT - 1.5))``."""
    nlos = 22.4 + 35.3 * np.log10(d3d) + 21.3 * np.log10(fc_ghz) - 0.3 * (h_ut - 1.5)
    return np.maximum(pathloss_umi_los(d2d, d3d, fc_ghz, h_bs, h_ut) if los_pl is None else los_pl, nlos)


PATHLOSS = {("UMa", True): pathloss_uma_los, ("UMa", False): pathloss_uma_nlos,
            ("UMi", True): pathloss_umi_los, ("UMi", False): pathloss_umi_nlos}


def los_probability(d2d, model: str, h_ut: float = 1.5):
    """TR 38.901 Table 7.4.2-1 LOS probability (UMa term C'(hUT) for UEs above 13 m)."""
    d = np.maximum(np.asarray(d2d, dtype=float), 1e-9)
    if model == "UMi":
        p = 18.0 / d + np.exp(-d / 36.0) * (1.0 - 18.0 / d)
    else:
        c = 0.0 if h_ut <= 13.0 else ((h_ut - 13.0) / 10.0) ** 1.5
        p = ((18.0 / d + np.exp(-d / 63.0) * (1.0 - 18.0 / d))
             * (1.0 + c * 1.25 * (d / 100.0) ** 3 * np.exp(-d / 150.0)))
    return np.where(d <= 18.0, 1.0, np.minimum(p, 1.0))


def sector_gain_db(angle_off_boresight_rad, max_gain_dbi: float, beamwidth_deg: float, front_to_back_db: float):
    """Horizontal pattern of TR 38.901 Table 7.3-1: ``G - min(12 (phi / phi3dB)^2, A_m)``."""
    off = np.asarray(angle_off_boresight_rad, dtype=float)
    off = off - (2.0 * np.pi) * np.round(off / (2.0 * np.pi))  # wrap to [-pi, pi] (cheaper than %)
    k = 12.0 * (180.0 / np.pi / beamwidth_deg) ** 2
    return max_gain_dbi - np.minimum(k * off * off, front_to_back_db)


def cell_gain_db(dx, dy, cell_site, cell_azimuth_rad, max_gain_dbi: float, beamwidth_deg: float,
                 front_to_back_db: float):
    """Each cell's antenna gain toward each UE: ``max_gain_dbi`` where every cell is omni (all azimuths
    NaN), else the sector pattern around the cell's azimuth. ``dx``, ``dy``: UE minus site (UE x site);
    ``cell_site``: the site of each cell."""
    if np.isnan(cell_azimuth_rad).all():
        return max_gain_dbi
    bearing = np.arctan2(dy, dx)[:, cell_site]
    return sector_gain_db(bearing - cell_azimuth_rad, max_gain_dbi, beamwidth_deg, front_to_back_db)


def noise_dbm(bandwidth_hz: float, noise_figure_db: float) -> float:
    return THERMAL_NOISE_DBM_PER_HZ + 10.0 * np.log10(bandwidth_hz) + noise_figure_db


def dbm_to_mw(dbm):
    return np.power(10.0, np.asarray(dbm) / 10.0)


def mw_to_dbm(mw):
    return 10.0 * np.log10(np.maximum(mw, 1e-30))


def sinr_matrix_db(rx_dbm: np.ndarray, cell_load: np.ndarray, noise_mw: float) -> np.ndarray:
    """SINR a UE would see on each cell: that cell's power over the load-weighted others plus noise.

    ``rx_dbm`` is (UEs, cells) received full-band power; ``cell_load`` the PRB
    utilisation of each cell (an idle cell still radiates its ``idle_load``).
    """
    rx_mw = dbm_to_mw(rx_dbm)
    weighted = rx_mw * cell_load
    interference = weighted.sum(axis=1, keepdims=True) - weighted
    return mw_to_dbm(rx_mw / (interference + noise_mw))


def spectral_efficiency(sinr_db, efficiency: float, cap: float):
    """Attenuated Shannon: ``min(efficiency * log2(1 + SINR), cap)`` bit/s/Hz."""
    return np.minimum(efficiency * np.log2(1.0 + dbm_to_mw(sinr_db)), cap)


def cqi_from_sinr(sinr_db) -> np.ndarray:
    """Highest CQI whose table efficiency the (unattenuated) Shannon capacity reaches; 0 = out of range."""
    shannon = np.log2(1.0 + dbm_to_mw(sinr_db))
    return np.searchsorted(CQI_EFFICIENCY, shannon, side="right").astype(np.int64)

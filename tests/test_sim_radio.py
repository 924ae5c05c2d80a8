"""Radio physics against values computed by hand from TR 38.901 / 38.214 (no simulator state involved)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tiertwin.connectors.simulator import radio

C = 299_792_458.0
FC = 3.5  # GHz


def test_breakpoint_distance_by_hand():
    # d'BP = 4 (hBS - 1)(hUT - 1) fc / c = 4 * 24 * 0.5 * 3.5e9 / 299792458 = 560.388 m (UMa, 25 m mast)
    assert radio.breakpoint_distance_m(25.0, 1.5, FC) == pytest.approx(560.388, abs=1e-3)
    # UMi, 10 m mast: 4 * 9 * 0.5 * 3.5e9 / c = 210.145 m
    assert radio.breakpoint_distance_m(10.0, 1.5, FC) == pytest.approx(210.145, abs=1e-3)


def test_uma_los_below_and_beyond_breakpoint_by_hand():
    # d2D = 100 m < d'BP: d3D = sqrt(100^2 + 23.5^2) = 102.724 m
    # PL1 = 28 + 22 log10(102.724) + 20 log10(3.5) = 28 + 22 * 2.011673 + 10.881361 = 83.138 dB
    d3 = math.sqrt(100 ** 2 + 23.5 ** 2)
    assert float(radio.pathloss_uma_los(100.0, d3, FC, 25.0, 1.5)) == pytest.approx(83.138, abs=1e-3)
    # d2D = 1000 m > d'BP = 560.388 m: d3D = 1000.276 m
    # PL2 = 28 + 40 log10(1000.276) + 20 log10(3.5) - 9 log10(560.388^2 + 23.5^2)
    #     = 28 + 120.004791 + 10.881361 - 9 * 5.497498 = 109.406 dB
    d3 = math.sqrt(1000 ** 2 + 23.5 ** 2)
    assert float(radio.pathloss_uma_los(1000.0, d3, FC, 25.0, 1.5)) == pytest.approx(109.406, abs=1e-3)


def test_uma_nlos_is_max_of_los_and_nlos_formula():
    # NLOS' = 13.54 + 39.08 log10(102.724) + 20 log10(3.5) - 0.6 (1.5 - 1.5) = 13.54 + 78.616 + 10.881 = 103.038 dB
    # > PL_LOS (83.138 dB), so PL_NLOS = 103.038 dB
    d3 = math.sqrt(100 ** 2 + 23.5 ** 2)
    assert float(radio.pathloss_uma_nlos(100.0, d3, FC, 25.0, 1.5)) == pytest.approx(103.038, abs=1e-3)


def test_umi_los_and_nlos_by_hand():
    # UMi, hBS = 10 m, d2D = 50 m: d3D = sqrt(50^2 + 8.5^2) = 50.717 m
    # LOS  PL1 = 32.4 + 21 log10(50.717) + 20 log10(3.5) = 32.4 + 35.808 + 10.881 = 79.090 dB
    # NLOS' = 22.4 + 35.3 log10(50.717) + 21.3 log10(3.5) = 22.4 + 60.192 + 11.589 = 94.181 dB
    d3 = math.sqrt(50 ** 2 + 8.5 ** 2)
    assert float(radio.pathloss_umi_los(50.0, d3, FC, 10.0, 1.5)) == pytest.approx(79.090, abs=1e-3)
    assert float(radio.pathloss_umi_nlos(50.0, d3, FC, 10.0, 1.5)) == pytest.approx(94.181, abs=1e-3)
    # beyond d'BP = 210.145 m: d2D = 400 m, d3D = 400.090 m
    # PL2 = 32.4 + 40 log10(400.090) + 20 log10(3.5) - 9.5 log10(210.145^2 + 8.5^2) = 103.233 dB
    d3 = math.sqrt(400 ** 2 + 8.5 ** 2)
    assert float(radio.pathloss_umi_los(400.0, d3, FC, 10.0, 1.5)) == pytest.approx(103.233, abs=1e-3)


def test_los_probability_by_hand():
    # UMi at 50 m: 18/50 + exp(-50/36)(1 - 18/50) = 0.36 + 0.249352 * 0.64 = 0.519585
    assert float(radio.los_probability(50.0, "UMi")) == pytest.approx(0.519585, abs=1e-6)
    # UMa at 100 m, hUT = 1.5 (C' = 0): 18/100 + exp(-100/63)(1 - 0.18) = 0.18 + 0.204467 * 0.82 = 0.347671
    assert float(radio.los_probability(100.0, "UMa")) == pytest.approx(0.347671, abs=1e-6)
    assert radio.los_probability(np.array([5.0, 18.0]), "UMa").tolist() == [1.0, 1.0]


def test_pathloss_is_vectorized_and_grows_with_distance():
    d = np.array([20.0, 50.0, 150.0, 300.0, 800.0])
    d3 = np.sqrt(d ** 2 + 8.5 ** 2)
    pl = radio.pathloss_umi_nlos(d, d3, FC, 10.0, 1.5)
    assert pl.shape == (5,) and np.all(np.diff(pl) > 0)


def test_sinr_with_one_equally_loaded_interferer():
    # Two cells heard at -80 and -90 dBm, both fully loaded, noise -100 dBm:
    # SINR on cell 0 = 1e-8 / (1e-9 + 1e-10) = 9.0909 -> 9.586 dB; on cell 1 = 1e-9 / (1e-8 + 1e-10) -> -10.043 dB
    sinr = radio.sinr_matrix_db(np.array([[-80.0, -90.0]]), np.array([1.0, 1.0]), 1e-10)
    assert sinr[0, 0] == pytest.approx(10 * math.log10(1e-8 / 1.1e-9), abs=1e-9)
    assert sinr[0, 1] == pytest.approx(10 * math.log10(1e-9 / (1e-8 + 1e-10)), abs=1e-9)
    # an idle neighbour (load 0.1) interferes ten times less: 1e-8 / (1e-10 + 1e-10) -> 16.990 dB
    quiet = radio.sinr_matrix_db(np.array([[-80.0, -90.0]]), np.array([1.0, 0.1]), 1e-10)
    assert quiet[0, 0] == pytest.approx(10 * math.log10(50.0), abs=1e-9)


def test_spectral_efficiency_cap_and_cqi_table():
    # 20 dB: 0.75 * log2(101) = 4.9937; 40 dB: 0.75 * log2(10001) = 9.966 -> capped at 7.4
    assert radio.spectral_efficiency(np.array([20.0, 40.0]), 0.75, 7.4).tolist() == pytest.approx([4.99366, 7.4], abs=1e-4)
    # CQI = number of 38.214 table-1 efficiencies <= log2(1 + SINR): -10 dB -> 0.1375 -> 0;
    # 0 dB -> 1.0 -> CQI 5 (0.8770 <= 1.0 < 1.1758); 30 dB -> 9.97 -> 15
    assert radio.cqi_from_sinr(np.array([-10.0, 0.0, 30.0])).tolist() == [0, 5, 15]


def test_sector_pattern_by_hand():
    # TR 38.901 Table 7.3-1: A = -min(12 (phi / 65)^2, 30); at 65 degrees off boresight: -12 dB
    gain = radio.sector_gain_db(np.radians([0.0, 65.0, 180.0]), 8.0, 65.0, 30.0)
    assert gain.tolist() == pytest.approx([8.0, -4.0, -22.0])

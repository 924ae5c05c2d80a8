"""Scenarios: every knob of the simulated network, validated by pydantic at load time.

A scenario is YAML (the presets live in ``connectors/simulator/presets/``: ``dense-urban-xr``,
``highway-vehicles``, ``stadium-event``). Every field has a default, so a file
only states what differs. Errors name the bad field::

    >>> Scenario.model_validate({"ues": 10}).layout.sites
    7
    >>> try:
    ...     parse_scenario({"radio": {"carrier_ghz": -1}}, source="mine.yaml")
    ... except ConfigError as exc:
    ...     print(exc)
    mine.yaml: radio.carrier_ghz: Input should be greater than 0.5
    >>> load_scenario("dense-urban-xr").name
    'dense-urban-xr'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tiertwin.errors import ConfigError, config_error
from tiertwin.pipelines.edf import CRITICAL_PRIORITY

PRESET_DIR = Path(__file__).resolve().parent / "presets"
Placement = Literal["local", "edge", "cloud"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayoutConfig(_Strict):
    """Hexagonal grid of gNB sites: ``rings`` around a centre site (0 -> 1 site, 1 -> 7, 2 -> 19)."""

    rings: int = Field(1, ge=0, le=6)
    isd_m: float = Field(200.0, gt=10, le=20_000, description="inter-site distance")
    sectored: bool = Field(True, description="3 cells per site at 120 degrees, else 1 omni cell")
    bs_height_m: float = Field(10.0, gt=1.5, le=100)

    @property
    def sites(self) -> int:
        return 1 + 3 * self.rings * (self.rings + 1)


class RadioConfig(_Strict):
    """3GPP TR 38.901 channel and the NR carrier."""

    model: Literal["UMa", "UMi"] = "UMi"
    los_model: Literal["38.901", "always", "never"] = "38.901"
    carrier_ghz: float = Field(3.5, gt=0.5, le=100)
    bandwidth_mhz: float = Field(100.0, gt=0, le=2000)
    prbs: int = Field(273, ge=1, le=3300)
    tx_power_dbm: float = Field(44.0, ge=0, le=70)
    antenna_gain_dbi: float = Field(8.0, ge=0, le=30)
    beamwidth_deg: float = Field(65.0, gt=0, le=360)
    front_to_back_db: float = Field(30.0, ge=0, le=60)
    noise_figure_db: float = Field(7.0, ge=0, le=20)
    ue_height_m: float = Field(1.5, ge=1.0, le=22.5)
    ue_tx_power_dbm: float = Field(23.0, ge=-10, le=33)
    bs_noise_figure_db: float = Field(5.0, ge=0, le=20)
    uplink_iot_db: float = Field(3.0, ge=0, le=30, description="uplink interference over thermal")
    uplink_fraction: float = Field(0.25, gt=0, lt=1, description="TDD share of slots that are uplink")
    shadowing: bool = True
    shadow_sigma_los_db: float = Field(4.0, ge=0, le=20)
    shadow_sigma_nlos_db: float = Field(7.82, ge=0, le=20)
    decorrelation_m: float = Field(10.0, gt=0, le=1000, description="shadowing decorrelation distance")
    los_decorrelation_m: float = Field(50.0, gt=0, le=1000, description="LOS-state decorrelation distance")
    mimo_layers: int = Field(2, ge=1, le=8, description="spatial layers multiplying the per-PRB rate")
    fast_fading: bool = False
    efficiency: float = Field(0.75, gt=0, le=1, description="fraction of Shannon capacity achieved")
    max_spectral_efficiency: float = Field(7.4, gt=0, le=30, description="bit/s/Hz cap (256-QAM)")
    idle_load: float = Field(0.1, ge=0, le=1, description="PRB load an empty cell still radiates (SSB, CSI-RS)")
    air_latency_ms: float = Field(1.0, ge=0, le=100, description="one-way scheduling + HARQ latency per direction")


class HandoverConfig(_Strict):
    """A3 event: neighbour RSRP > serving RSRP + offset + hysteresis for time-to-trigger."""

    a3_offset_db: float = Field(3.0, ge=-15, le=15)
    hysteresis_db: float = Field(1.0, ge=0, le=15)
    time_to_trigger_ms: float = Field(160.0, ge=0, le=5120)
    decision_hold_ms: float = Field(2000.0, ge=0, le=600_000, description="A3 is suspended this long after a decided handover")


class UEGroup(_Strict):
    """A share of the UEs moving the same way."""

    share: float = Field(1.0, gt=0)
    kind: Literal["pedestrian", "vehicle"] = "pedestrian"
    model: Literal["random_waypoint", "gauss_markov", "highway", "linear"] = "random_waypoint"
    speed_mps: tuple[float, float] = (0.5, 1.8)
    pause_s: tuple[float, float] = (0.0, 5.0)
    memory: float = Field(0.85, ge=0, le=1, description="Gauss-Markov alpha per second")
    centre_m: tuple[float, float] | None = None
    radius_m: float | None = Field(None, gt=0, description="confine the group to this disc (default: the whole layout)")
    lanes: int = Field(4, ge=1, le=16, description="highway: lanes along the x axis")
    lane_spacing_m: float = Field(4.0, gt=0, le=100)

    @model_validator(mode="after")
    def _ranges(self) -> "UEGroup":
        if not 0 <= self.speed_mps[0] <= self.speed_mps[1] <= 150:
            raise ValueError("speed_mps must be [low, high] with 0 <= low <= high <= 150")
        if not 0 <= self.pause_s[0] <= self.pause_s[1]:
            raise ValueError("pause_s must be [low, high] with 0 <= low <= high")
        return self


class DeviceConfig(_Strict):
    """UE hardware and its XR application."""

    compute_gcps: float = Field(20.0, gt=0, le=10_000, description="device CPU/GPU, 10^9 cycles/s")
    battery_wh: float = Field(15.0, gt=0, le=1000)
    idle_w: float = Field(0.5, ge=0, le=100)
    xr_w: float = Field(3.0, ge=0, le=100)
    compute_j_per_gcycle: float = Field(0.3, ge=0, le=100)
    xr_share: float = Field(0.5, ge=0, le=1, description="stationary share of UEs in an XR session")
    xr_session_s: float = Field(120.0, gt=0, description="mean XR session length")
    frame_rates: list[int] = Field(default_factory=lambda: [60, 72, 90, 120], min_length=1)
    xr_bitrate_mbps: tuple[float, float] = (10.0, 40.0)
    background_mbps: float = Field(2.0, ge=0, le=10_000, description="downlink traffic of a UE without XR")
    critical_priority: int = Field(CRITICAL_PRIORITY, ge=0, le=7, description=(
        "local work at or above this priority runs earliest-deadline-first on the device, the rest behind it "
        "in arrival order (the local twin's critical_priority)"))


class DemandKindConfig(_Strict):
    """Arrival rate and size of one demand kind (ranges are drawn uniformly)."""

    per_second: float = Field(ge=0, le=1000, description="arrivals per UE per second (XR frames: per XR UE)")
    gcycles: tuple[float, float]
    input_bytes: tuple[int, int]
    output_bytes: tuple[int, int] | None = Field(None, description="None = one XR frame at the UE's bitrate")
    deadline_ms: float = Field(gt=0, le=1.0e7)
    priority: int = Field(ge=0, le=7)


class DemandConfig(_Strict):
    xr_frame: DemandKindConfig = DemandKindConfig(per_second=10.0, gcycles=(0.2, 0.6), input_bytes=(1_000, 4_000),
                                                  deadline_ms=20.0, priority=6)
    ai_inference: DemandKindConfig = DemandKindConfig(per_second=1.0, gcycles=(1.0, 4.0),
                                                      input_bytes=(20_000, 200_000), output_bytes=(200, 2_000),
                                                      deadline_ms=100.0, priority=4)
    content_generation: DemandKindConfig = DemandKindConfig(per_second=0.05, gcycles=(20.0, 80.0),
                                                            input_bytes=(500, 5_000),
                                                            output_bytes=(100_000, 1_000_000),
                                                            deadline_ms=2000.0, priority=2)


class ComputeConfig(_Strict):
    """MEC servers (one per site), the cloud, and the backhaul between them."""

    mec_gcps: float = Field(200.0, gt=0, le=1.0e6, description="capacity of each site's MEC server")
    cloud_gcps: float = Field(5000.0, gt=0, le=1.0e7)
    backhaul_latency_ms: float = Field(10.0, ge=0, le=10_000, description="one-way edge -> cloud latency")
    backhaul_gbps: float = Field(10.0, gt=0, le=10_000)
    default_placement: Placement | Literal["random"] = Field(
        "cloud", description="where a demand runs without a decision; 'random' explores all three (training data)")
    decision_timeout_ms: float = Field(10.0, ge=0, le=600_000, description="live mode: wait this long for a placement")


class Scenario(_Strict):
    """A complete simulated world. ``Scenario()`` is a laptop-sized dense urban XR cell cluster."""

    name: str = "custom"
    ues: int = Field(100, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0)
    step_ms: float = Field(10.0, gt=0, le=1000)
    telemetry_hz: float = Field(10.0, gt=0, le=1000)
    cell_report_hz: float = Field(5.0, gt=0, le=1000)
    start_ms: int = Field(1_767_225_600_000, ge=0, description="simulated clock at t=0 (non-realtime mode)")
    layout: LayoutConfig = LayoutConfig()
    radio: RadioConfig = RadioConfig()
    handover: HandoverConfig = HandoverConfig()
    mobility: list[UEGroup] = Field(default_factory=lambda: [UEGroup()], min_length=1)
    device: DeviceConfig = DeviceConfig()
    demands: DemandConfig = DemandConfig()
    compute: ComputeConfig = ComputeConfig()

    def with_overrides(self, **changes: object) -> "Scenario":
        """A validated copy with top-level fields replaced (``None`` values are ignored)."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        return parse_scenario(data, source=self.name)


def parse_scenario(data: dict, source: str = "scenario") -> Scenario:
    """Validate a mapping; :class:`ConfigError` names the first bad field as a dotted path."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, str(source)) from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A preset by name (``connectors/simulator/presets/<name>.yaml``) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix and (PRESET_DIR / f"{name_or_path}.yaml").exists():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"scenario {name_or_path!s}: no such file or preset (presets: {', '.join(preset_names())})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: a scenario must be a mapping")
    data.setdefault("name", path.stem)
    return parse_scenario(data, source=path.name)

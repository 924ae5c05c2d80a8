"""The simulated world: one vectorized ``step()`` of radio, mobility, devices and compute for every UE.

``World(scenario, seed)`` holds the state as numpy arrays over UEs and cells.
Each :meth:`World.step` advances the simulated clock by ``scenario.step_ms``:

1. UEs move (:mod:`.mobility`); shadowing and LOS state decorrelate with the distance moved.
2. Received power from every site: TR 38.901 path loss (:mod:`.radio`), sector antenna
   pattern, correlated log-normal shadowing, optional Rayleigh fast fading.
3. SINR on every cell, with interference weighted by each neighbour's PRB load of the previous step.
4. A3 handover (offset + hysteresis held for time-to-trigger), suspended for
   ``decision_hold_ms`` after a decided handover.
5. PRBs of each cell are shared among its UEs (reserved shares from ``prb_share``
   decisions first, equal split of the rest); throughput = share x bandwidth x spectral efficiency.
6. Devices: XR sessions start and stop, battery drains, CPU follows XR and local work.
7. Each device runs its local work earliest-deadline-first (preemptive, in the order of
   :func:`~tiertwin.pipelines.edf.edf_key`, the key the local twin's EDF queue predicts with);
   a local demand's Outcome is emitted in the step its work completes.
8. MEC slices drain their queues, most urgent priority first (preemptive), the cloud its FIFO
   queue; new demands arrive (:mod:`.demands`).

Decisions (:meth:`World.apply_decision`; each ``decision_id`` is applied once):

* ``placement`` (``subject_id`` = demand id, ``target`` local / edge / cloud): the pending demand runs
  there; its Outcome carries the ``decision_id`` (on the device: once its work completes). After the
  timeout: a ``late`` decision Outcome.
* ``handover`` (``ue_id``, ``target`` ``cell:<id>``): immediate; A3 is suspended for
  ``decision_hold_ms`` (or ``parameters["hold_ms"]``). Effect: SINR / RSRP before and after.
* ``prb_share`` (``parameters["share"]``): with ``ue_id``, a PRB reservation in the UE's cell (until it
  hands over); else for ``cell_id``, the fraction of PRBs the cell may use (less interference too).
* ``mec_share`` (``cell_id``, ``share``): that cell's slice of its site's MEC server; cells without a
  decided share split the rest equally. Claims over the server (a cell without a decision claims an
  equal split) are scaled down together, so no cell starves because its neighbours were decided for.
* ``xr_bitrate`` (``ue_id``, ``parameters["bitrate_mbps"]``): frames get smaller or larger.
* ``migration``: counted (the twin moves, not the UE).

Anything else (unknown UE / cell, share outside [0, 1]) raises :class:`WorldRejected`
(reason ``inapplicable-decision``), which the loop dead-letters.

An in-process placer (the UEs' device twins): with ``world.placer = place``, where
``place(demand) -> (target, decision_id, decision_wait_ms)``, every demand is placed the moment
it arises, inside :meth:`demand_records`; nothing waits and no decision is late.

Records are pulled, not pushed: after a step, :meth:`telemetry_records`,
:meth:`demand_records`, :meth:`cell_reports` and :meth:`outcome_records` return the
dicts due now, valid against the Avro contracts. :meth:`apply_decision` obeys a
Decision; :meth:`submit_demand` runs a demand where it is placed (an edge or cloud Outcome at
once, a device Outcome when its work completes); :meth:`execute_demand` is its synchronous form.

>>> from tiertwin.connectors.simulator.scenarios import Scenario
>>> world = World(Scenario(ues=20), seed=7)
>>> state = world.step()
>>> state.sinr_db.shape, world.now_ms - world.start_ms
((20,), 10)
>>> telemetry = world.telemetry_records()
>>> demand = world.demand_records()   # may be empty this early
>>> outcome = world.execute_demand({"demand_id": "d", "ue_id": "ue-0003", "ts_ms": world.now_ms,
...     "kind": "ai_inference", "compute_gcycles": 2.0, "input_bytes": 50_000, "output_bytes": 1_000,
...     "deadline_ms": 100.0, "priority": 4, "serving_cell": 0, "emitted_ns": 0}, "edge")
>>> outcome["placement"], sorted(outcome["components_ms"])
('edge', ['backhaul', 'compute', 'decision', 'downlink', 'queue', 'uplink'])
>>> world.apply_decision({"decision_id": "h1", "kind": "handover", "ue_id": "ue-0003",
...     "target": "cell:5", "parameters": {}})["effect"]["applied"]
1.0
>>> int(world.serving[3])
5
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tiertwin.connectors.simulator import radio
from tiertwin.connectors.simulator.demands import KINDS, NewDemands, backhaul_ms, draw_demands, transfer_ms
from tiertwin.connectors.simulator.layout import Layout
from tiertwin.connectors.simulator.mobility import Mobility
from tiertwin.connectors.simulator.scenarios import Scenario
from tiertwin.errors import RecordRejected
from tiertwin.pipelines.edf import edf_key

PLACEMENTS = ("local", "edge", "cloud")
PRIORITY_LEVELS = 8
NEIGHBOURS_REPORTED = 3
RECENTLY_RESOLVED = 100_000


@dataclass(frozen=True)
class StepState:
    """Vectorized view of the world after a step (arrays are the world's own; do not mutate)."""

    t_ms: float
    xy: np.ndarray
    serving: np.ndarray
    rsrp_dbm: np.ndarray
    sinr_db: np.ndarray
    dl_mbps: np.ndarray
    ul_mbps: np.ndarray
    cell_utilization: np.ndarray
    handovers: int


@dataclass
class WorldStats:
    """Counters for the run summary."""

    decisions: Counter = field(default_factory=Counter)        # applied, by kind
    placements: Counter = field(default_factory=Counter)       # demands executed, by placement
    decided: int = 0                                           # demands placed by a decision
    defaulted: int = 0                                         # demands placed by the default policy
    late_decisions: int = 0
    unknown_decisions: int = 0
    duplicate_decisions: int = 0                               # redelivered (same decision_id): ignored
    handovers_a3: int = 0
    handovers_decided: int = 0
    migrations: int = 0
    latencies_ms: array = field(default_factory=lambda: array("d"))   # 8 bytes a demand, not 32: runs last days
    misses: int = 0


@dataclass
class _Pending:
    record: dict
    ue: int


class _DeviceTask(list):
    """Local work in a device's EDF queue: ``[edf key, arrival seq, remaining ms]`` sort it (the seq is
    unique, so the comparison never reaches the rest); the demand rides along for its Outcome."""

    __slots__ = ("compute_ms", "enqueued_ms", "wait_ms", "demand", "decision_id", "reported")


class WorldRejected(RecordRejected):
    reason = "inapplicable-decision"


class World:
    """A seedable, deterministic mobile-metaverse network. See the module docstring."""

    def __init__(self, scenario: Scenario, seed: int | None = None, start_ms: int | None = None,
                 wall_clock_ns: Callable[[], int] | None = None):
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.rng = np.random.default_rng(self.seed)
        self.policy_rng = np.random.default_rng([self.seed, 1])  # own stream: the policy never shifts the physics
        self.layout = Layout.hexagonal(scenario.layout)
        self.start_ms = scenario.start_ms if start_ms is None else start_ms
        self.wall_clock_ns = wall_clock_ns
        self.t_ms = 0.0
        self.await_decisions = False
        self.placer: Callable[[dict], tuple[str, str | None, float]] | None = None
        self.stats = WorldStats()
        n, sites, cells = scenario.ues, self.layout.n_sites, self.layout.n_cells
        self.ue_ids = [f"ue-{i:04d}" for i in range(n)]
        self.ue_index = {u: i for i, u in enumerate(self.ue_ids)}
        self.mobility = Mobility.from_groups(scenario.mobility, n, self.layout.area_radius_m, self.rng)
        self._init_radio(n, sites, cells)
        self._init_devices(n)
        self._init_compute(cells)
        self._init_records(n, cells)
        self._radio_pass(np.zeros(n))
        self.serving = np.argmax(self.rsrp_matrix, axis=1)
        self._allocate()

    # -- initial state -------------------------------------------------------------------------
    def _init_radio(self, n: int, sites: int, cells: int) -> None:
        r = self.scenario.radio
        self.shadow_z = self.rng.standard_normal((n, sites))
        self.los_u = self.rng.random((n, sites))
        self.cell_load = np.full(cells, r.idle_load)
        self.cell_prb_share = np.ones(cells)
        self.ue_prb_share = np.full(n, np.nan)
        self.noise_mw = float(radio.dbm_to_mw(radio.noise_dbm(r.bandwidth_mhz * 1e6, r.noise_figure_db)))
        self.a3_timer_ms = np.zeros(n)
        self.a3_candidate = np.full(n, -1)
        self.hold_until_ms = np.zeros(n)
        self.handovers_since_report = np.zeros(cells, dtype=np.int64)

    def _init_devices(self, n: int) -> None:
        d = self.scenario.device
        self.battery_pct = 50.0 + 50.0 * self.rng.random(n)
        self.cpu_base = 0.05 + 0.25 * self.rng.random(n)
        self.memory_base = 0.2 + 0.3 * self.rng.random(n)
        self.xr_active = self.rng.random(n) < d.xr_share
        self.frame_rate = np.array(d.frame_rates)[self.rng.integers(0, len(d.frame_rates), n)]
        self.xr_bitrate = d.xr_bitrate_mbps[0] + (d.xr_bitrate_mbps[1] - d.xr_bitrate_mbps[0]) * self.rng.random(n)
        self.bitrate_override = np.full(n, np.nan)
        self.device_backlog_ms = np.zeros(n)                  # local work not yet done, per UE
        self.device_tasks: dict[int, list[_DeviceTask]] = {}  # only UEs with work: by EDF key
        self._task_seq = 0

    def _init_compute(self, cells: int) -> None:
        self.mec_share_explicit = np.full(cells, np.nan)
        self.mec_queue_by_priority = np.zeros((cells, PRIORITY_LEVELS))  # work waiting per cell slice and priority
        self.mec_done_gcycles = np.zeros(cells)
        self.cloud_queue_gcycles = 0.0
        self._update_mec_capacity()

    def _init_records(self, n: int, cells: int) -> None:
        self.telemetry_period_ms = 1000.0 / self.scenario.telemetry_hz
        self.next_telemetry_ms = self.rng.random(n) * self.telemetry_period_ms
        self.seq = np.zeros(n, dtype=np.int64)
        self.report_period_ms = 1000.0 / self.scenario.cell_report_hz
        self.next_report_ms = 0.0
        self.demand_counter = np.zeros(n, dtype=np.int64)
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.resolved: OrderedDict[str, str] = OrderedDict()
        self.applied_ids: OrderedDict[str, None] = OrderedDict()
        self._outbox: list[dict] = []
        self._new = NewDemands(*(np.zeros(0, dtype=np.int64) for _ in range(7)))
        self._telemetry_due = np.zeros(n, dtype=bool)
        self._report_due = True

    # -- clocks --------------------------------------------------------------------------------
    @property
    def now_ms(self) -> int:
        """Event time (simulated clock) in ms since epoch."""
        return self.start_ms + int(round(self.t_ms))

    def clock_ns(self) -> int:
        """Wall clock in realtime mode; the simulated clock otherwise (so runs are reproducible)."""
        if self.wall_clock_ns is not None:
            return self.wall_clock_ns()
        return self.start_ms * 1_000_000 + int(round(self.t_ms * 1e6))

    # -- the vectorized step -------------------------------------------------------------------
    def step(self) -> StepState:
        """Advance the world by one step; return the vectorized state."""
        dt_ms = self.scenario.step_ms
        self.t_ms += dt_ms
        moved = self.mobility.step(dt_ms / 1000.0, self.rng)
        self._radio_pass(moved)
        handovers = self._a3_handover(dt_ms)
        self._allocate()
        self._devices(dt_ms / 1000.0)
        if self.device_tasks:
            self._run_device_work(self.t_ms - dt_ms, self.t_ms)
        self._drain_compute(dt_ms / 1000.0)
        self._new = draw_demands(self.scenario.demands, self.rng, dt_ms / 1000.0, self.xr_active,
                                 self.xr_bitrate, self.frame_rate)
        self._telemetry_due = self.next_telemetry_ms <= self.t_ms
        self.next_telemetry_ms[self._telemetry_due] += self.telemetry_period_ms
        self._report_due = self.next_report_ms <= self.t_ms
        if self._report_due:
            self.next_report_ms += self.report_period_ms
        self.expire_pending()
        return StepState(self.t_ms, self.mobility.xy, self.serving, self.rsrp_dbm, self.sinr_db, self.dl_mbps,
                         self.ul_mbps, self.cell_utilization, handovers)

    def _radio_pass(self, moved: np.ndarray) -> None:
        r, layout = self.scenario.radio, self.layout
        dx = self.mobility.xy[:, None, 0] - layout.site_xy[None, :, 0]
        dy = self.mobility.xy[:, None, 1] - layout.site_xy[None, :, 1]
        d2d = np.maximum(np.hypot(dx, dy), 10.0)  # TR 38.901 formulas hold from 10 m
        d3d = np.sqrt(d2d ** 2 + (layout.bs_height_m - r.ue_height_m) ** 2)
        rho = np.exp(-moved / r.decorrelation_m)[:, None]
        rho_los = np.exp(-moved / r.los_decorrelation_m)[:, None]
        fresh_z = self.rng.standard_normal(self.shadow_z.shape)
        fresh_u = self.rng.random(self.los_u.shape)
        if r.shadowing:  # Gudmundson AR(1) along the UE's path
            self.shadow_z = rho * self.shadow_z + np.sqrt(1.0 - rho ** 2) * fresh_z
        redraw = self.rng.random(self.los_u.shape) > rho_los
        self.los_u = np.where(redraw, fresh_u, self.los_u)
        if r.los_model == "38.901":
            los = self.los_u < radio.los_probability(d2d, r.model, r.ue_height_m)
        else:
            los = np.full(d2d.shape, r.los_model == "always")
        args = (d2d, d3d, r.carrier_ghz, layout.bs_height_m, r.ue_height_m)
        los_pl = radio.PATHLOSS[(r.model, True)](*args)
        pl = np.where(los, los_pl, radio.PATHLOSS[(r.model, False)](*args, los_pl=los_pl))
        if r.shadowing:
            pl = pl + np.where(los, r.shadow_sigma_los_db, r.shadow_sigma_nlos_db) * self.shadow_z
        site_loss = pl[:, layout.cell_site]
        gain = radio.cell_gain_db(dx, dy, layout.cell_site, layout.cell_azimuth_rad, r.antenna_gain_dbi,
                                  r.beamwidth_deg, r.front_to_back_db)
        self.path_gain_db = gain - site_loss
        if r.fast_fading:
            self.path_gain_db = self.path_gain_db + 10.0 * np.log10(self.rng.exponential(size=site_loss.shape))
        rx_dbm = r.tx_power_dbm + self.path_gain_db
        self.rsrp_matrix = rx_dbm - 10.0 * np.log10(12.0 * r.prbs)
        self.sinr_matrix = radio.sinr_matrix_db(rx_dbm, self.cell_load, self.noise_mw)

    def _a3_handover(self, dt_ms: float) -> int:
        h = self.scenario.handover
        rows = np.arange(len(self.serving))
        serving_rsrp = self.rsrp_matrix[rows, self.serving]
        others = self.rsrp_matrix.copy()
        others[rows, self.serving] = -np.inf
        best = np.argmax(others, axis=1)
        entering = (others[rows, best] > serving_rsrp + h.a3_offset_db + h.hysteresis_db) \
            & (self.t_ms >= self.hold_until_ms)
        same = best == self.a3_candidate
        self.a3_timer_ms = np.where(entering, np.where(same, self.a3_timer_ms + dt_ms, 0.0), 0.0)
        self.a3_candidate = np.where(entering, best, -1)
        fire = np.flatnonzero(entering & (self.a3_timer_ms >= h.time_to_trigger_ms))
        if fire.size:
            self._hand_over(fire, best[fire])
            self.stats.handovers_a3 += int(fire.size)
        return int(fire.size)

    def _hand_over(self, ues: np.ndarray, cells: np.ndarray) -> None:
        np.add.at(self.handovers_since_report, self.serving[ues], 1)
        np.add.at(self.handovers_since_report, cells, 1)
        self.serving[ues] = cells
        self.ue_prb_share[ues] = np.nan  # a PRB reservation belongs to the cell that granted it
        self.a3_timer_ms[ues] = 0.0
        self.a3_candidate[ues] = -1

    def _allocate(self) -> None:
        """Share each cell's PRBs among its UEs; derive rates and the cell loads for the next step."""
        r, d = self.scenario.radio, self.scenario.device
        cells, s = self.layout.n_cells, self.serving
        rows = np.arange(len(s))
        self.sinr_db = self.sinr_matrix[rows, s]
        self.rsrp_dbm = self.rsrp_matrix[rows, s]
        reserved = np.nan_to_num(self.ue_prb_share, nan=0.0)
        has_reservation = ~np.isnan(self.ue_prb_share)
        reserved_sum = np.bincount(s, weights=reserved, minlength=cells)
        scale = np.where(reserved_sum > self.cell_prb_share, self.cell_prb_share / np.maximum(reserved_sum, 1e-12), 1.0)
        rest = self.cell_prb_share - reserved_sum * scale
        unreserved = np.bincount(s, weights=~has_reservation, minlength=cells)
        self.prb_share = np.where(has_reservation, reserved * scale[s], rest[s] / np.maximum(unreserved[s], 1.0))
        bw_mhz = r.bandwidth_mhz
        se_dl = r.mimo_layers * radio.spectral_efficiency(self.sinr_db, r.efficiency, r.max_spectral_efficiency)
        self.dl_mbps = self.prb_share * bw_mhz * (1.0 - r.uplink_fraction) * se_dl
        alloc_hz = np.maximum(self.prb_share * bw_mhz * 1e6, 1.0)
        snr_ul = (r.ue_tx_power_dbm + self.path_gain_db[rows, s]
                  - (radio.THERMAL_NOISE_DBM_PER_HZ + 10.0 * np.log10(alloc_hz) + r.bs_noise_figure_db) - r.uplink_iot_db)
        se_ul = radio.spectral_efficiency(snr_ul, r.efficiency, r.max_spectral_efficiency)
        self.ul_mbps = self.prb_share * bw_mhz * r.uplink_fraction * se_ul
        self.offered_mbps = np.where(self.xr_active, self.xr_bitrate, d.background_mbps)
        need = self.offered_mbps / np.maximum(bw_mhz * (1.0 - r.uplink_fraction) * se_dl, 1e-9)
        used = np.bincount(s, weights=np.minimum(need, self.prb_share), minlength=cells)
        self.cell_utilization = np.minimum(used, self.cell_prb_share)
        self.cell_load = np.maximum(self.cell_utilization, r.idle_load)
        self.cell_load_mbps = np.bincount(s, weights=np.minimum(self.offered_mbps, self.dl_mbps), minlength=cells)
        self.attached = np.bincount(s, minlength=cells)

    def _devices(self, dt_s: float) -> None:
        d = self.scenario.device
        n = len(self.xr_active)
        p_stop = min(dt_s / d.xr_session_s, 1.0)
        p_start = 0.0 if d.xr_share <= 0 else (1.0 if d.xr_share >= 1 else min(p_stop * d.xr_share / (1 - d.xr_share), 1.0))
        u = self.rng.random(n)
        starting = ~self.xr_active & (u < p_start) & (self.battery_pct > 0)
        stopping = self.xr_active & ((u < p_stop) & (d.xr_share < 1) | (self.battery_pct <= 0))
        if starting.any():
            k = int(starting.sum())
            self.frame_rate[starting] = np.array(d.frame_rates)[self.rng.integers(0, len(d.frame_rates), k)]
            fresh = d.xr_bitrate_mbps[0] + (d.xr_bitrate_mbps[1] - d.xr_bitrate_mbps[0]) * self.rng.random(k)
            self.xr_bitrate[starting] = np.where(np.isnan(self.bitrate_override[starting]), fresh,
                                                 self.bitrate_override[starting])
        self.xr_active = (self.xr_active | starting) & ~stopping
        watts = d.idle_w + d.xr_w * self.xr_active
        self.battery_pct = np.maximum(self.battery_pct - watts * dt_s / 3600.0 / d.battery_wh * 100.0, 0.0)

    @property
    def cpu_util(self) -> np.ndarray:
        busy = self.device_backlog_ms > 0.0
        return np.clip(self.cpu_base + 0.35 * self.xr_active + 0.4 * busy, 0.0, 1.0)

    @property
    def memory_util(self) -> np.ndarray:
        return np.clip(self.memory_base + 0.2 * self.xr_active, 0.0, 1.0)

    # -- compute ------------------------------------------------------------------------------
    def _update_mec_capacity(self) -> None:
        """Each site's MEC server is sliced among its cells. A decided share is a claim; a cell nobody
        decided for claims an equal split. Claims that fit are granted (undecided cells share whatever
        the decided ones leave); claims over the server are scaled down together, so a cell that was
        never decided for keeps a slice instead of starving behind its neighbours' decisions."""
        site = self.layout.cell_site
        n_sites = self.layout.n_sites
        has = ~np.isnan(self.mec_share_explicit)
        explicit = np.nan_to_num(self.mec_share_explicit, nan=0.0)
        cells_at = np.bincount(site, minlength=n_sites).astype(float)
        claim = np.where(has, explicit, 1.0 / cells_at[site])
        claimed = np.bincount(site, weights=claim, minlength=n_sites)
        explicit_sum = np.bincount(site, weights=explicit, minlength=n_sites)
        implicit = np.bincount(site, weights=~has, minlength=n_sites)
        fits = claimed <= 1.0 + 1e-12
        granted = np.where(has, explicit, (1.0 - explicit_sum)[site] / np.maximum(implicit[site], 1.0))
        share = np.where(fits[site], granted, claim / np.maximum(claimed[site], 1e-12))
        self.mec_share = share
        self.mec_capacity_gcps = share * self.scenario.compute.mec_gcps

    @property
    def mec_queue_gcycles(self) -> np.ndarray:
        """Work waiting in each cell's MEC slice, all priorities."""
        return self.mec_queue_by_priority.sum(axis=1)

    def _drain_compute(self, dt_s: float) -> None:
        # preemptive priority: each slice serves its most urgent work first
        urgent_first = self.mec_queue_by_priority[:, ::-1]
        ahead = np.cumsum(urgent_first, axis=1) - urgent_first
        done = np.clip((self.mec_capacity_gcps * dt_s)[:, None] - ahead, 0.0, urgent_first)
        self.mec_queue_by_priority -= done[:, ::-1]
        self.mec_done_gcycles += done.sum(axis=1)
        self.cloud_queue_gcycles = max(self.cloud_queue_gcycles - self.scenario.compute.cloud_gcps * dt_s, 0.0)

    # -- demands ------------------------------------------------------------------------------
    def demand_records(self) -> list[dict]:
        """Demands issued in the last step. With a :attr:`placer` they are placed at once; else, without a
        decision source, they run at once on the default placement."""
        new, out = self._new, []
        if not len(new):
            return out
        ts, emitted = self.now_ms, self.clock_ns()
        for ue, kind, gc, inp, outb, deadline, prio in zip(new.ue.tolist(), new.kind.tolist(), new.gcycles.tolist(),
                                                           new.input_bytes.tolist(), new.output_bytes.tolist(),
                                                           new.deadline_ms.tolist(), new.priority.tolist()):
            self.demand_counter[ue] += 1
            ue_id = self.ue_ids[ue]
            record = {"demand_id": f"{ue_id}/d/{int(self.demand_counter[ue])}", "ue_id": ue_id, "ts_ms": ts,
                      "kind": KINDS[kind], "compute_gcycles": gc, "input_bytes": inp, "output_bytes": outb,
                      "deadline_ms": deadline, "priority": prio, "serving_cell": int(self.serving[ue]),
                      "emitted_ns": emitted}
            out.append(record)
            if self.placer is not None:   # decided in-process, the moment the demand arises
                target, decision_id, wait_ms = self.placer(record)
                self.stats.decisions["placement"] += 1
                self._resolve(record, target, decision_id, wait_ms)
            elif self.await_decisions:
                self.pending[record["demand_id"]] = _Pending(record, ue)
            else:
                self._resolve(record, self.default_placement(), None, 0.0)
        self._new = NewDemands(*(np.zeros(0, dtype=np.int64) for _ in range(7)))
        return out

    def expire_pending(self) -> int:
        """Run every demand whose decision did not come within the timeout on the default placement."""
        timeout_ms = self.scenario.compute.decision_timeout_ms
        now_ns, expired = self.clock_ns(), 0
        while self.pending:
            demand_id, entry = next(iter(self.pending.items()))
            if (now_ns - entry.record["emitted_ns"]) / 1e6 < timeout_ms:
                break
            del self.pending[demand_id]
            self._resolve(entry.record, self.default_placement(), None, timeout_ms)
            expired += 1
        return expired

    def default_placement(self) -> str:
        """The configured default policy: a fixed placement, or uniformly random (exploration)."""
        policy = self.scenario.compute.default_placement
        return PLACEMENTS[int(self.policy_rng.integers(0, 3))] if policy == "random" else policy

    def resolve_pending(self) -> int:
        """Run every still-pending demand on the default placement now (end of a run), as if timed out."""
        count = len(self.pending)
        while self.pending:
            _, entry = self.pending.popitem(last=False)
            self._resolve(entry.record, self.default_placement(), None, self.scenario.compute.decision_timeout_ms)
        return count

    def _resolve(self, demand: dict, placement: str, decision_id: str | None, wait_ms: float) -> dict | None:
        outcome = self.submit_demand(demand, placement, decision_id, wait_ms)
        if decision_id is None:
            self.stats.defaulted += 1
        else:
            self.stats.decided += 1
        self.resolved[demand["demand_id"]] = placement
        if len(self.resolved) > RECENTLY_RESOLVED:
            self.resolved.popitem(last=False)
        if outcome is not None:
            self._outbox.append(outcome)
        return outcome

    def submit_demand(self, demand: dict, placement: str, decision_id: str | None = None,
                      decision_wait_ms: float = 0.0) -> dict | None:
        """Run ``demand`` on ``placement`` from now on. Edge and cloud: return its Outcome (the queue ahead
        is known). Device: queue its work (EDF) and return None; its Outcome comes out of
        :meth:`outcome_records` in the step the work completes, since more urgent work arriving later
        preempts it."""
        if placement != "local":
            return self.execute_demand(demand, placement, decision_id, decision_wait_ms)
        self._queue_local(demand, decision_id, decision_wait_ms)
        return None

    def execute_demand(self, demand: dict, placement: str, decision_id: str | None = None,
                       decision_wait_ms: float = 0.0) -> dict:
        """Run ``demand`` on ``placement`` now (loading the device, MEC slice or cloud); return its Outcome.

        The synchronous form of :meth:`submit_demand`, for replays that need the Outcome at once: on the
        device the latency is the EDF wait behind the work queued now (later, more urgent arrivals would
        preempt it; the live world reports that, see :meth:`submit_demand`).
        """
        if placement not in PLACEMENTS:
            raise WorldRejected(f"placement target {placement!r} is not one of {PLACEMENTS}")
        ue = self._ue(demand["ue_id"])
        c = self.scenario.compute
        gcycles, inp, outb = demand["compute_gcycles"], demand["input_bytes"], demand["output_bytes"]
        parts = {"decision": float(decision_wait_ms), "uplink": 0.0, "queue": 0.0, "compute": 0.0,
                 "backhaul": 0.0, "downlink": 0.0}
        cell = int(self.serving[ue])
        if placement == "local":
            task = self._queue_local(demand, decision_id, decision_wait_ms)
            task.reported = True   # this Outcome is the one; the device does not emit another on completion
            parts["queue"] = sum(t[2] for t in self.device_tasks[ue] if t < task)
            parts["compute"] = task.compute_ms
        else:
            air = self.scenario.radio.air_latency_ms
            parts["uplink"] = air + float(transfer_ms(inp, self.ul_mbps[ue]))
            parts["downlink"] = air + float(transfer_ms(outb, self.dl_mbps[ue]))
            if placement == "edge":
                capacity = max(float(self.mec_capacity_gcps[cell]), 1e-9)
                priority = int(demand["priority"])
                ahead = float(self.mec_queue_by_priority[cell, priority:].sum())  # equal or more urgent work
                parts["queue"] = ahead / capacity * 1000.0
                self.mec_queue_by_priority[cell, priority] += gcycles
            else:
                capacity = c.cloud_gcps
                parts["queue"] = self.cloud_queue_gcycles / capacity * 1000.0
                parts["backhaul"] = backhaul_ms(inp, outb, c.backhaul_latency_ms, c.backhaul_gbps)
                self.cloud_queue_gcycles += gcycles
            parts["compute"] = gcycles / capacity * 1000.0
        return self._demand_outcome(demand, placement, decision_id, parts, cell)

    def _demand_outcome(self, demand: dict, placement: str, decision_id: str | None, parts: dict,
                        cell: int) -> dict:
        latency = min(sum(parts.values()), 1.0e7)
        met = latency <= demand["deadline_ms"]
        self.stats.placements[placement] += 1
        self.stats.latencies_ms.append(latency)
        self.stats.misses += not met
        return {"outcome_id": f"{demand['demand_id']}/outcome", "ts_ms": int(demand["ts_ms"] + math.ceil(latency)),
                "kind": "demand", "ue_id": demand["ue_id"], "cell_id": cell, "demand_id": demand["demand_id"],
                "decision_id": decision_id, "placement": placement, "latency_ms": latency,
                "deadline_ms": float(demand["deadline_ms"]), "deadline_met": met, "components_ms": parts,
                "effect": {}, "emitted_ns": self.clock_ns()}

    # -- the devices' local work (preemptive EDF) --------------------------------------------------
    def _queue_local(self, demand: dict, decision_id: str | None, wait_ms: float) -> _DeviceTask:
        ue = self._ue(demand["ue_id"])
        d = self.scenario.device
        gcycles = float(demand["compute_gcycles"])
        compute_ms = gcycles / d.compute_gcps * 1000.0
        self._task_seq += 1
        task = _DeviceTask((edf_key(demand["ts_ms"], demand["deadline_ms"], demand["priority"], d.critical_priority),
                            self._task_seq, compute_ms))
        task.compute_ms, task.enqueued_ms, task.wait_ms = compute_ms, self.t_ms, float(wait_ms)
        task.demand, task.decision_id, task.reported = demand, decision_id, False
        bisect.insort(self.device_tasks.setdefault(ue, []), task)
        self.device_backlog_ms[ue] += compute_ms
        joules = gcycles * d.compute_j_per_gcycle
        self.battery_pct[ue] = max(self.battery_pct[ue] - joules / 3600.0 / d.battery_wh * 100, 0)
        return task

    def _run_device_work(self, start_ms: float, end_ms: float) -> None:
        """Every device with work spends ``[start_ms, end_ms)`` of simulated time on its queue, the
        smallest EDF key first; each finished demand's Outcome goes to the outbox. Only busy UEs are
        visited, so an idle world pays nothing here."""
        tasks_of, backlog = self.device_tasks, self.device_backlog_ms
        for ue in list(tasks_of):
            tasks = tasks_of[ue]
            clock = start_ms
            while tasks and clock < end_ms:
                head = tasks[0]
                used = min(end_ms - clock, head[2])
                clock += used
                head[2] -= used
                backlog[ue] -= used
                if head[2] <= 1e-9:
                    del tasks[0]
                    self._finish_local(ue, head, clock)
            if not tasks:
                del tasks_of[ue]
                backlog[ue] = 0.0   # no float dust left behind

    def _finish_local(self, ue: int, task: _DeviceTask, done_ms: float) -> None:
        if task.reported:
            return
        in_device = done_ms - task.enqueued_ms
        parts = {"decision": task.wait_ms, "uplink": 0.0, "queue": max(in_device - task.compute_ms, 0.0),
                 "compute": task.compute_ms, "backhaul": 0.0, "downlink": 0.0}
        self._outbox.append(self._demand_outcome(task.demand, "local", task.decision_id, parts, int(self.serving[ue])))

    def finish_local_work(self) -> int:
        """Run every device's queued work to completion now (end of a run), emitting its Outcomes."""
        count = sum(len(t) for t in self.device_tasks.values())
        if count:
            self._run_device_work(self.t_ms, math.inf)
        return count

    # -- decisions ----------------------------------------------------------------------------
    def apply_decision(self, decision: dict) -> dict | None:
        """Obey a Decision; return the Outcome it produced (None for a placement whose demand is unknown or
        goes to the device, whose Outcome comes when its work completes, or for a decision_id already
        applied: redeliveries are ignored).

        Raises :class:`WorldRejected` (a RecordRejected, reason ``inapplicable-decision``)
        when the decision names no such UE / cell or a parameter is out of range.
        """
        kind = decision.get("kind")
        handler = getattr(self, f"_decide_{kind}", None)
        if handler is None:
            raise WorldRejected(f"decision kind {kind!r} is not one the simulator applies")
        decision_id = decision.get("decision_id")
        if decision_id in self.applied_ids:  # at-least-once delivery: apply each decision once
            self.stats.duplicate_decisions += 1
            return None
        outcome = handler(decision)
        self.remember_applied(decision_id)
        if outcome is not None and kind != "placement":
            self.stats.decisions[kind] += 1
            self._outbox.append(outcome)
        return outcome

    def remember_applied(self, decision_id: str) -> None:
        """Count ``decision_id`` as applied: a redelivery of it is then a duplicate (the last 100 000 are kept)."""
        self.applied_ids[decision_id] = None
        if len(self.applied_ids) > RECENTLY_RESOLVED:
            self.applied_ids.popitem(last=False)

    def _decide_placement(self, decision: dict) -> dict | None:
        demand_id, target = decision.get("subject_id"), decision.get("target")
        if target not in PLACEMENTS:
            raise WorldRejected(f"placement target {target!r} is not one of {PLACEMENTS}")
        entry = self.pending.pop(demand_id, None) if demand_id else None
        if entry is not None:
            wait_ms = max((self.clock_ns() - entry.record["emitted_ns"]) / 1e6, 0.0)
            self.stats.decisions["placement"] += 1
            return self._resolve(entry.record, target, decision["decision_id"], wait_ms)
        if demand_id in self.resolved:  # the timeout beat the decision: tell the learner
            self.stats.late_decisions += 1
            outcome = self._decision_outcome(decision, None, {"applied": 0.0, "late": 1.0})
            outcome["demand_id"] = demand_id
            outcome["placement"] = self.resolved[demand_id]
            self._outbox.append(outcome)
            return outcome
        self.stats.unknown_decisions += 1
        return None

    def _decide_handover(self, decision: dict) -> dict:
        ue = self._ue(decision.get("ue_id"))
        target = decision.get("target") or ""
        try:
            cell = int(target.split(":", 1)[1]) if target.startswith("cell:") else int(target)
        except ValueError:
            raise WorldRejected(f"handover target {target!r} is not 'cell:<id>'") from None
        self._cell(cell)
        before_sinr, before_rsrp = float(self.sinr_db[ue]), float(self.rsrp_dbm[ue])
        if cell != self.serving[ue]:
            self._hand_over(np.array([ue]), np.array([cell]))
            self.stats.handovers_decided += 1
        hold = decision.get("parameters", {}).get("hold_ms", self.scenario.handover.decision_hold_ms)
        self.hold_until_ms[ue] = self.t_ms + hold
        self._allocate()
        after_sinr, after_rsrp = float(self.sinr_db[ue]), float(self.rsrp_dbm[ue])
        return self._decision_outcome(decision, ue, {
            "applied": 1.0, "sinr_before_db": before_sinr, "sinr_after_db": after_sinr,
            "rsrp_before_dbm": before_rsrp, "rsrp_after_dbm": after_rsrp, "reward": after_sinr - before_sinr},
            cell=cell)

    def _decide_prb_share(self, decision: dict) -> dict:
        share = self._share(decision)
        if decision.get("ue_id"):
            ue = self._ue(decision["ue_id"])
            before = float(self.dl_mbps[ue])
            self.ue_prb_share[ue] = share
            self._allocate()
            after = float(self.dl_mbps[ue])
            return self._decision_outcome(decision, ue, {"applied": 1.0, "throughput_before_mbps": before,
                                                         "throughput_after_mbps": after, "reward": after - before})
        cell = self._cell(decision.get("cell_id"))
        before = float(self.dl_mbps[self.serving == cell].sum())
        self.cell_prb_share[cell] = share
        self._allocate()
        after = float(self.dl_mbps[self.serving == cell].sum())
        return self._decision_outcome(decision, None, {"applied": 1.0, "capacity_before_mbps": before,
                                                       "capacity_after_mbps": after}, cell=cell)

    def _decide_mec_share(self, decision: dict) -> dict:
        share = self._share(decision)
        cell = self._cell(decision.get("cell_id"))
        before = float(self.mec_capacity_gcps[cell])
        self.mec_share_explicit[cell] = share
        self._update_mec_capacity()
        after = float(self.mec_capacity_gcps[cell])
        return self._decision_outcome(decision, None, {"applied": 1.0, "capacity_before_gcps": before,
                                                       "capacity_after_gcps": after,
                                                       "queue_gcycles": float(self.mec_queue_gcycles[cell])}, cell=cell)

    def _decide_xr_bitrate(self, decision: dict) -> dict:
        ue = self._ue(decision.get("ue_id"))
        bitrate = decision.get("parameters", {}).get("bitrate_mbps")
        if bitrate is None or not (0.0 < bitrate <= 10_000.0) or not math.isfinite(bitrate):
            raise WorldRejected(f"xr_bitrate needs parameters.bitrate_mbps in (0, 10000], got {bitrate!r}")
        before = float(self.xr_bitrate[ue])
        frame = lambda mbps: float(transfer_ms(mbps * 1e6 / 8.0 / max(int(self.frame_rate[ue]), 1), self.dl_mbps[ue]))
        self.bitrate_override[ue] = bitrate
        self.xr_bitrate[ue] = bitrate
        self._allocate()
        return self._decision_outcome(decision, ue, {
            "applied": 1.0, "xr_active": float(self.xr_active[ue]), "bitrate_before_mbps": before,
            "bitrate_after_mbps": float(bitrate), "frame_downlink_before_ms": frame(before),
            "frame_downlink_after_ms": frame(bitrate)})

    def _decide_migration(self, decision: dict) -> dict:
        self.stats.migrations += 1
        ue = self.ue_index.get(decision.get("ue_id") or "")
        return self._decision_outcome(decision, ue, {"applied": 0.0, "migrations_total": float(self.stats.migrations)})

    def _decision_outcome(self, decision: dict, ue: int | None, effect: dict, cell: int | None = None) -> dict:
        if cell is None:
            cell = int(self.serving[ue]) if ue is not None else decision.get("cell_id")
        return {"outcome_id": f"{decision['decision_id']}/effect", "ts_ms": self.now_ms, "kind": "decision",
                "ue_id": self.ue_ids[ue] if ue is not None else decision.get("ue_id"), "cell_id": cell,
                "demand_id": None, "decision_id": decision["decision_id"], "placement": None, "latency_ms": None,
                "deadline_ms": None, "deadline_met": None, "components_ms": {},
                "effect": {k: float(v) for k, v in effect.items()}, "emitted_ns": self.clock_ns()}

    def _ue(self, ue_id: str | None) -> int:
        if ue_id not in self.ue_index:
            raise WorldRejected(f"no UE {ue_id!r} in this world ({len(self.ue_ids)} UEs)")
        return self.ue_index[ue_id]

    def _cell(self, cell: int | None) -> int:
        if cell is None or not 0 <= int(cell) < self.layout.n_cells:
            raise WorldRejected(f"no cell {cell!r} in this world ({self.layout.n_cells} cells)")
        return int(cell)

    @staticmethod
    def _share(decision: dict) -> float:
        share = decision.get("parameters", {}).get("share")
        if share is None or not 0.0 <= share <= 1.0:
            raise WorldRejected(f"{decision.get('kind')} needs parameters.share in [0, 1], got {share!r}")
        return float(share)

    # -- records ------------------------------------------------------------------------------
    def outcome_records(self) -> list[dict]:
        """Outcomes produced since the last call (demands executed, decisions applied)."""
        out, self._outbox = self._outbox, []
        return out

    def telemetry_records(self) -> list[dict]:
        """Telemetry of the UEs whose report is due this step (``telemetry_hz`` per UE, staggered)."""
        due = np.flatnonzero(self._telemetry_due)
        if not due.size:
            return []
        self._telemetry_due = np.zeros_like(self._telemetry_due)
        ts, emitted = self.now_ms, self.clock_ns()
        self.seq[due] += 1
        others = self.rsrp_matrix[due].copy()
        others[np.arange(due.size), self.serving[due]] = -np.inf
        k = min(NEIGHBOURS_REPORTED, self.layout.n_cells - 1)
        if k > 0:
            top = np.argpartition(-others, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(others, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            nb_rsrp = np.clip(np.take_along_axis(others, top, axis=1), -156, -31).tolist()
            nb_sinr = np.clip(np.take_along_axis(self.sinr_matrix[due], top, axis=1), -30, 50).tolist()
            top = top.tolist()
        else:
            top = nb_rsrp = nb_sinr = [[] for _ in due]
        serving = self.serving[due]
        util = np.minimum(self.cell_utilization[serving], 0.95)
        rtt = 2.0 * self.scenario.radio.air_latency_ms * (1.0 + util / (1.0 - util))
        xr = self.xr_active[due]
        cols = zip(due.tolist(), self.seq[due].tolist(), serving.tolist(),
                   np.clip(self.rsrp_dbm[due], -156, -31).tolist(), np.clip(self.sinr_db[due], -30, 50).tolist(),
                   np.clip(radio.cqi_from_sinr(self.sinr_db[due]), 0, 15).tolist(),
                   self.dl_mbps[due].tolist(), self.ul_mbps[due].tolist(), rtt.tolist(),
                   self.cpu_util[due].tolist(), self.memory_util[due].tolist(), self.battery_pct[due].tolist(),
                   self.mobility.xy[due, 0].tolist(), self.mobility.xy[due, 1].tolist(),
                   np.minimum(self.mobility.speed[due], 150.0).tolist(),
                   np.mod(self.mobility.heading_deg_from_north()[due], 360.0).tolist(),
                   xr.tolist(), np.where(xr, self.frame_rate[due], 0).tolist(),
                   np.where(xr, self.xr_bitrate[due], 0.0).tolist(), top, nb_rsrp, nb_sinr)
        records = []
        for (ue, seq, cell, rsrp, sinr, cqi, dl, ul, rtt_ms, cpu, mem, batt, x, y, speed, heading, active, fps,
             bitrate, nb_cells, nb_r, nb_s) in cols:
            records.append({
                "ue_id": self.ue_ids[ue], "ts_ms": ts, "seq": seq, "serving_cell": cell, "rsrp_dbm": rsrp,
                "sinr_db": sinr, "cqi": cqi, "throughput_dl_mbps": dl, "throughput_ul_mbps": ul, "rtt_ms": rtt_ms,
                "neighbours": [{"cell_id": c, "rsrp_dbm": r_, "sinr_db": s_} for c, r_, s_ in zip(nb_cells, nb_r, nb_s)],
                "cpu_util": cpu, "memory_util": mem, "battery_pct": batt, "x_m": x, "y_m": y, "latitude": None,
                "longitude": None, "speed_mps": speed, "heading_deg": heading if heading < 360.0 else 0.0,
                "xr_active": active, "frame_rate_fps": fps, "xr_bitrate_mbps": bitrate, "emitted_ns": emitted})
        return records

    def cell_reports(self) -> list[dict]:
        """EdgeState ground truth of every cell, when a report is due (``cell_report_hz``)."""
        if not self._report_due:
            return []
        self._report_due = False
        layout, cells = self.layout, self.layout.n_cells
        sinr_sum = np.bincount(self.serving, weights=self.sinr_db, minlength=cells)
        mean_sinr = np.where(self.attached > 0, sinr_sum / np.maximum(self.attached, 1), 0.0)
        site_queue = np.bincount(layout.cell_site, weights=self.mec_queue_gcycles, minlength=layout.n_sites)
        site_done = np.bincount(layout.cell_site, weights=self.mec_done_gcycles, minlength=layout.n_sites)
        site_util = np.minimum(site_done / (self.scenario.compute.mec_gcps * self.report_period_ms / 1000.0), 1.0)
        ts, emitted = self.now_ms, self.clock_ns()
        records = []
        for cell, site, attached, util, load, sinr, ho in zip(
                range(cells), layout.cell_site.tolist(), self.attached.tolist(), self.cell_utilization.tolist(),
                self.cell_load_mbps.tolist(), np.clip(mean_sinr, -30, 50).tolist(),
                self.handovers_since_report.tolist()):
            records.append({"cell_id": cell, "site_id": site, "ts_ms": ts, "attached_ues": attached,
                            "prb_utilization": min(max(util, 0.0), 1.0), "cell_load_mbps": load,
                            "mean_sinr_db": sinr, "mec_queue_gcycles": float(site_queue[site]),
                            "mec_utilization": float(site_util[site]),
                            "mec_capacity_gcps": float(self.scenario.compute.mec_gcps), "handovers": ho,
                            "emitted_ns": emitted})
        self.handovers_since_report[:] = 0
        self.mec_done_gcycles[:] = 0.0
        return records

"""The report of ``tiertwin bench tiers``: ``report.md``, ``results.json`` and PNG plots.

Every figure is pooled over the rounds, with its spread across the rounds beside it
(``min–max``), since one round on a shared machine proves little.

>>> _range({"min": 10.0, "max": 14.5, "stdev": 2.0})
'10.0–14.5'
>>> _pct_range({"min": 0.1, "max": 0.25, "stdev": 0.1})
'10.0–25.0 %'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tiertwin.jobs.experiments.evaluation import BASELINES, ModeMetrics
from tiertwin.stats import summary_ms

COLOURS = {"no-control": "#888888", "always-edge": "#b5a642", "always-local": "#7a5aa8",
           "device": "#2a9a4a", "edge": "#2a7ab0", "cloud": "#d0672a"}
KIND_NAMES = {"xr_frame": "XR frame", "ai_inference": "inference", "content_generation": "generation"}


def write_report(results: dict[str, Any], metrics: dict[str, ModeMetrics], out_dir: Path) -> Path:
    """``report.md`` plus PNG plots and ``results.json`` in ``out_dir``; returns the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    live = {m: x for m, x in metrics.items() if m not in BASELINES}

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, attr, title in ((axes[0], "loop_ms", "loop latency: observed -> applied in the network"),
                            (axes[1], "decision_ms", "decision latency: input produced -> decided")):
        for mode, m in live.items():
            for tier, values in sorted(getattr(m, attr).items()):
                _cdf(ax, values, f"{mode} / {tier}", COLOURS[mode], "-" if tier == "local" else "--")
        _log_cdf_axes(ax, "ms", title)
    fig.tight_layout()
    plots.append(_save(fig, out_dir / "decision_latency_cdf.png"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode, m in metrics.items():
        _cdf(ax, m.demand_latency_ms, mode, COLOURS[mode], ":" if mode in BASELINES else "-")
    _log_cdf_axes(ax, "end-to-end demand latency (ms, decision wait + execution)", "Demands: end-to-end latency per mode")
    fig.tight_layout()
    plots.append(_save(fig, out_dir / "demand_latency_cdf.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    kinds = sorted({k for m in metrics.values() for k in m.by_kind})
    width = 0.8 / max(len(metrics), 1)
    for i, (mode, m) in enumerate(metrics.items()):
        spreads = results["modes"][mode]["spread"]["by_kind_miss_rate"]
        rates = [m.by_kind.get(k, {}).get("deadline_miss_rate", 0.0) for k in kinds]
        low = [max(r - spreads[k]["min"], 0.0) if k in spreads else 0.0 for r, k in zip(rates, kinds)]
        high = [max(spreads[k]["max"] - r, 0.0) if k in spreads else 0.0 for r, k in zip(rates, kinds)]
        axes[0].bar([j + i * width for j in range(len(kinds))], rates, width, yerr=[low, high], capsize=2,
                    label=mode, color=COLOURS[mode])
    axes[0].set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(kinds))],
                       [KIND_NAMES.get(k, k) for k in kinds])
    axes[0].set_ylabel("deadline-miss rate (bars: min-max over rounds)")
    axes[0].set_title("Deadline misses per demand kind")
    axes[0].legend(fontsize=8)
    for mode, m in live.items():
        for tier, values in sorted(m.staleness_ms.items()):
            _cdf(axes[1], values, f"{mode} / {tier}", COLOURS[mode], "-" if tier == "local" else "--")
    _log_cdf_axes(axes[1], "twin staleness at decision time (ms)", "Age of the newest observation behind a decision")
    fig.tight_layout()
    plots.append(_save(fig, out_dir / "deadlines_staleness.png"))

    path = out_dir / "report.md"
    path.write_text(report_markdown(results, [p.name for p in plots]))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return path


def _log_cdf_axes(ax, xlabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("CDF")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _cdf(ax, values, label: str, colour: str, style: str) -> None:
    a = np.sort(np.asarray(values, dtype=float))
    if a.size:
        # A log axis: values at or below 0.01 ms (in-process decisions, clock resolution) sit at its left edge.
        ax.plot(np.maximum(a, 0.01), np.arange(1, a.size + 1) / a.size, style, color=colour, label=f"{label} (n={a.size})")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _f(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.{digits}f}" if abs(value) >= 0.1 or value == 0 else f"{value:.3f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value * 100:.1f} %"


def _range(s: dict | None, digits: int = 1) -> str:
    if not s or s["min"] != s["min"]:
        return "-"
    return f"{_f(s['min'], digits)}–{_f(s['max'], digits)}"


def _pct_range(s: dict | None) -> str:
    if not s or s["min"] != s["min"]:
        return "-"
    return f"{s['min'] * 100:.1f}–{s['max'] * 100:.1f} %"


def _change_range(s: dict | None) -> str:
    """The rounds' reductions as words.

    >>> _change_range({"min": 0.571, "max": 0.642}), _change_range({"min": -1.795, "max": -0.032})
    ('57.1–64.2 % lower', '3.2–179.5 % higher')
    >>> _change_range({"min": -0.132, "max": 0.164})
    '13.2 % higher – 16.4 % lower'
    """
    if not s or s["min"] != s["min"]:
        return "-"
    low, high = s["min"], s["max"]
    if low >= 0:
        return f"{low * 100:.1f}–{high * 100:.1f} % lower"
    if high < 0:
        return f"{-high * 100:.1f}–{-low * 100:.1f} % higher"
    return f"{-low * 100:.1f} % higher – {high * 100:.1f} % lower"


def _path(text: str) -> str:
    """A placement path as links: ``local_edge+edge_cloud`` -> ``local↔edge + edge↔cloud``."""
    return " + ".join(part.replace("_", "↔") for part in text.split("+"))


def _change(value: float | None) -> str:
    """A reduction as words: 0.4 -> '40.0 % lower', -0.1 -> '10.0 % higher'."""
    if value is None or value != value:
        return "-"
    return f"{value * 100:.1f} % lower" if value >= 0 else f"{-value * 100:.1f} % higher"


def report_markdown(results: dict[str, Any], plots: list[str]) -> str:
    c, modes, cmp, tgt = results["config"], results["modes"], results["comparison"], results.get("targets", {})
    le, ec = c["local_edge"], c["edge_cloud"]
    rounds = c["rounds"]
    lines = [
        "# Where the local twin runs: device, edge or cloud", "",
        f"Scenario `{c['scenario']}`, {c['ues']} UEs, {rounds} round(s) of {c['seconds']:g} s per mode (seeds "
        f"{', '.join(map(str, c['seeds']))}: every mode of a round on the same seed; live modes on the wall clock, "
        f"their order alternating between rounds; first {c['warmup_s']:g} s of each run not counted); decision "
        f"timeout {c['decision_timeout_ms']:g} ms.",
        f"Links (one way): local<->edge {le['one_way_ms']:g} ms +- {le['jitter_ms']:g} ms, loss {le['loss']:g}; "
        f"edge<->cloud {ec['one_way_ms']:g} ms +- {ec['jitter_ms']:g} ms, loss {ec['loss']:g} "
        f"(a lost segment costs a {le['rto_ms']:g} ms retransmission timeout). Figures are pooled over the rounds; "
        "ranges are min–max across rounds.", "",
        "| mode | the network (simulator) | local twin | edge twin |", "|---|---|---|---|",
    ]
    for mode, placement in c["placement"].items():
        if mode in modes:
            local = ("in the simulator process (device runtime)" if mode == "device"
                     else f"service, {placement.get('local', '-')}")
            where = _path(placement["simulator"])
            lines.append(f"| {mode} | {where} from the broker | {local} | {placement['edge']} |")
    for mode, policy in c["baseline_policy"].items():
        if mode in modes:
            lines.append(f"| {mode} | every demand placed `{policy}` at once, no twin (offline) | - | - |")
    for mode, why in results.get("skipped", {}).items():
        lines.append(f"| {mode} | not run: {why} | - | - |")
    load = results.get("machine", {}).get("load_average_before_after", {})
    if load:
        lines += ["", f"Machine: {results['machine']['cpus']} CPUs shared with other work; 1-minute load average "
                      "before / after each live run: " + ", ".join(f"{m} {a} / {b}" for m, pairs in load.items()
                                                                   for a, b in pairs)
                  + " (a loaded machine stretches every live latency here)."]
    if tgt:
        lines += ["", "## Targets (device mode)", ""]
        for t in tgt.values():
            lines.append(f"- {t['target']}: **{'met' if t['met'] else 'not met'}** pooled "
                         f"({_target_value(t)}); met in {t['rounds_met']} of {t['rounds']} round(s).")
    lines += ["", "## End-to-end demand latency and deadline misses", "",
              "| mode | demands | mean ms | (rounds) | p99 ms | (rounds) | deadline misses | (rounds) | decided / default |",
              "|---|---|---|---|---|---|---|---|---|"]
    for mode, s in modes.items():
        d, sp = s["demand_latency_ms"], s["spread"]
        lines.append(f"| {mode} | {s['demands']} | {_f(d['mean'])} | {_range(sp['mean_ms'])} | {_f(d['p99'])} | "
                     f"{_range(sp['p99_ms'])} | {_pct(s['deadline_miss_rate'])} | {_pct_range(sp['deadline_miss_rate'])} | "
                     f"{s['decided']} / {s['defaulted']} |")
    pairs = {k: p for k, p in cmp.items() if isinstance(p, dict) and "mean_reduction" in p}
    if pairs:
        lines += ["", "## Comparisons (same seed in each round)", "",
                  "| mode vs reference | mean end-to-end | (rounds) | p99 end-to-end | (rounds) | misses, ratio | (rounds) |",
                  "|---|---|---|---|---|---|---|"]
    for key, p in pairs.items():
        sp = p["spread"]
        lines.append(f"| {key.replace('_vs_', ' vs ')} | {_change(p['mean_reduction'])} | {_change_range(sp['mean_reduction'])} | "
                     f"{_change(p['p99_reduction'])} | {_change_range(sp['p99_reduction'])} | {_f(p['miss_ratio'], 2)} | "
                     f"{_range(sp['miss_ratio'], 2)} |")
    if pairs:
        lines += ["", f"Reductions are 1 - mode / reference (the paper's summary claims {_pct(cmp['paper_claim_reduction'])} "
                      "lower end-to-end latency for the hierarchy); the miss ratio is the mode's deadline-miss rate "
                      "over the reference's."]
    kinds = sorted({k for s in modes.values() for k in s["by_kind"]})
    lines += ["", "## Deadline misses per demand kind", "",
              "| mode | " + " | ".join(f"{KIND_NAMES.get(k, k)} misses | (rounds) | mean ms" for k in kinds) + " |",
              "|---|" + "---|---|---|" * len(kinds)]
    for mode, s in modes.items():
        cells = []
        for k in kinds:
            bk, sp = s["by_kind"].get(k), s["spread"]["by_kind_miss_rate"].get(k)
            cells.append(f"{bk['misses']} / {bk['demands']} = {_pct(bk['deadline_miss_rate'])} | {_pct_range(sp)} | "
                         f"{_f(bk['mean_ms'])}" if bk else "- | - | -")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    if any(s["decision_latency_ms"] for s in modes.values()):
        lines += ["", "## Decision latency per tier", "",
                  "| mode | tier | decisions/s | decision p50 / p99 ms | p99 (rounds) | loop p50 / p99 ms | "
                  "staleness p50 / p99 ms |", "|---|---|---|---|---|---|---|"]
    for mode, s in modes.items():
        for tier, dl in s["decision_latency_ms"].items():
            loop, st = s["loop_latency_ms"].get(tier, summary_ms([])), s["staleness_ms"].get(tier, summary_ms([]))
            lines.append(f"| {mode} | {tier} | {_f(s['decisions_per_s'].get(tier, 0.0))} | {_f(dl['p50'])} / {_f(dl['p99'])} | "
                         f"{_range(s['spread']['decision_p99_ms'].get(tier))} | {_f(loop['p50'])} / {_f(loop['p99'])} | "
                         f"{_f(st['p50'])} / {_f(st['p99'])} |")
    if any(s["decision_latency_ms"] for s in modes.values()):
        lines += ["", "Decision latency = input record produced -> decision made (device mode: the demand is produced "
                  "and placed in the same process); loop latency = input observed -> decision applied by the network "
                  "(for placements, the demand's wait for its decision: in device mode the wall time of `place()`); "
                  "staleness = age of the newest observation behind the decision when it is made (for placements "
                  "the demand itself, for edge decisions the newest telemetry in the local twin's summary). Baselines "
                  "make no decisions."]
    lines += ["", "## Where demands ran: decision wait vs execution", "",
              "| mode | placement | demands | mean decision wait ms | mean execution ms |", "|---|---|---|---|---|"]
    for mode, s in modes.items():
        for placement, p in s["by_placement"].items():
            lines.append(f"| {mode} | {placement} | {p['demands']} | {_f(p['decision_wait_mean_ms'])} | "
                         f"{_f(p['execution_mean_ms'])} |")
    lines += ["", "## Placements and decisions", ""]
    for mode, s in modes.items():
        lines.append(f"- {mode}: placements {s['placements']}; decisions {s['decisions_by_kind'] or '-'}; "
                     f"simulator steps more than one step behind the wall clock: {s['steps_behind']} "
                     f"(runs took {s['wall_s']:.1f} s of wall clock in all)")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _target_value(t: dict) -> str:
    v = t["value"]
    if "misses" in t["target"]:
        return f"ratio {_f(v, 2)}"
    return _change(v)

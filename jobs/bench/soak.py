"""``tiertwin bench soak``: the system at a steady rate for minutes; RSS and consumer lag over time.

Deploys a local agent, an edge agent and the simulator (wall-clock paced) on scratch
consumer groups, samples every process's resident memory (``/proc/<pid>/status``)
and the agents' consumer lag, and writes ``bench-results/soak.json`` plus a PNG. A
bounded process's RSS flattens: the report compares the growth over the second
half of the run with the first half.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import typer

from tiertwin.jobs.bench import write_results
from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.jobs.ops.launcher import SPECS_DIR, JobSpec, consumer_progress, deploy, load_spec, status_of, stop
from tiertwin.settings import Settings


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _growth(series: list[float]) -> tuple[float, float]:
    """(MB gained over the first half, MB gained over the second half)."""
    if len(series) < 4:
        return float("nan"), float("nan")
    mid = len(series) // 2
    return series[mid] - series[0], series[-1] - series[mid]


def run_soak(minutes: float = 10.0, ues: int = 200, sample_s: float = 5.0, settings: Settings | None = None,
             out_dir: Path = Path("bench-results")) -> dict:
    settings = settings or Settings.from_env()
    run = uuid.uuid4().hex[:6]
    # inputs as the shipped specs declare them (the agents' own group_topics(); a test checks they agree)
    shipped = {tier: load_spec(SPECS_DIR / f"{tier}.yaml").inputs for tier in ("local", "edge")}
    specs = [
        JobSpec(name=f"soak-local-{run}", tier="local", group_id=f"tiertwin-local-soak-{run}",
                inputs=shipped["local"], config={"from_beginning": False}),
        JobSpec(name=f"soak-edge-{run}", tier="edge", group_id=f"tiertwin-edge-soak-{run}",
                inputs=shipped["edge"], config={"from_beginning": False}),
    ]
    simulator = JobSpec(name=f"soak-sim-{run}", tier="simulator",
                        args=["--scenario", "dense-urban-xr", "--realtime", "--seconds", str(minutes * 60 + 30),
                              "--ues", str(ues), "--group-id", f"tiertwin-simulator-soak-{run}"])
    samples: list[dict] = []
    started = []
    try:
        for spec in specs:
            deploy(spec, settings)
            started.append(spec.name)
        time.sleep(6)
        deploy(simulator, settings)
        started.append(simulator.name)
        t0 = time.monotonic()
        while time.monotonic() - t0 < minutes * 60:
            time.sleep(sample_s)
            row = {"t_s": round(time.monotonic() - t0, 1)}
            for name in started:
                state = status_of(name, settings)
                if state["running"] == 0:
                    raise RuntimeError(f"{name} died during the soak; see {state['instances'][0]['log']}")
                row[f"{name}_rss_mb"] = rss_mb(state["instances"][0]["pid"])
            for spec in specs:
                row[f"{spec.name}_lag"] = consumer_progress(spec.group_id, spec.inputs, settings)[1]
            samples.append(row)
    finally:
        for name in reversed(started):
            stop(name, settings)
    results = {"minutes": minutes, "ues": ues, "sample_s": sample_s, "samples": samples, "processes": {}}
    for name in started:
        series = [s[f"{name}_rss_mb"] for s in samples if s.get(f"{name}_rss_mb") is not None]
        first, second = _growth(series)
        results["processes"][name] = {
            "rss_start_mb": series[0] if series else None, "rss_end_mb": series[-1] if series else None,
            "growth_first_half_mb": first, "growth_second_half_mb": second,
            "bounded": bool(series) and second <= max(5.0, first),
        }
    for spec in specs:
        lags = [s[f"{spec.name}_lag"] for s in samples]
        results["processes"][spec.name]["max_lag"] = max(lags) if lags else None
        results["processes"][spec.name]["final_lag"] = lags[-1] if lags else None
    _plot(results, out_dir / "soak.png")
    return results


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    if not samples:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    t = [s["t_s"] for s in samples]
    for key in samples[0]:
        if key.endswith("_rss_mb"):
            top.plot(t, [s[key] for s in samples], label=key.removesuffix("_rss_mb"))
        elif key.endswith("_lag"):
            bottom.plot(t, [s[key] for s in samples], label=key.removesuffix("_lag"))
    top.set_ylabel("RSS (MB)")
    top.legend(fontsize=8)
    bottom.set_ylabel("consumer lag (records)")
    bottom.set_xlabel("seconds")
    bottom.legend(fontsize=8)
    fig.suptitle(f"Soak: {results['minutes']} min, {results['ues']} UEs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
bench_commands = typer.Typer()


@bench_commands.command("soak")
@one_line_errors
def soak_cmd(minutes: float = typer.Option(10.0, help="How long to run."),
             ues: int = typer.Option(200, help="Simulated UEs."),
             sample: float = typer.Option(5.0, help="Seconds between samples.")):
    """Steady load for minutes: RSS of every process and the agents' consumer lag over time (JSON + PNG)."""
    results = run_soak(minutes, ues, sample)
    path = write_results("soak", results)
    for name, p in results["processes"].items():
        console.print(f"{name:28} rss {p['rss_start_mb']:.0f} -> {p['rss_end_mb']:.0f} MB "
                      f"(+{p['growth_first_half_mb']:.1f} / +{p['growth_second_half_mb']:.1f} MB per half) "
                      f"bounded={p['bounded']} max_lag={p.get('max_lag', '-')}")
    console.print(f"wrote {path} and bench-results/soak.png")

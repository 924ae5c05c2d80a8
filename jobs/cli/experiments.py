"""``tiertwin whatif`` and ``tiertwin linkemu``: the evaluation commands (``bench tiers`` is in jobs/bench/tiers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.topics import ACTIONS_LOCAL, DEMANDS, TELEMETRY


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
commands = typer.Typer()


@commands.command("whatif")
@one_line_errors
def whatif_cmd(
    log: Path = typer.Argument(..., help="Archive folder (tiertwin archive) with demands and telemetry."),
    a: str = typer.Option("logged", "--a", help="Policy A (see below)."),
    b: str = typer.Option("agent", "--b", help="Policy B."),
    scenario: str = typer.Option("dense-urban-xr", "--scenario", "-s", help="The network the log came from."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default LOG/whatif)."),
    demands_topic: str = typer.Option(DEMANDS, help="Archived topic of Demand records."),
    telemetry_topic: str = typer.Option(TELEMETRY, help="Archived topic of Telemetry records."),
    actions_topic: str = typer.Option(ACTIONS_LOCAL, help="Archived placement decisions (for 'logged')."),
):
    """Replay one archived log through two policies and compare their decisions and outcomes.

    Policies: ``default:cloud|edge|local|random`` (the simulator's fixed policy), ``logged``
    (the placements made live), ``agent[:cost_local=2,cost_edge=1,cost_cloud=1.5,margin=0.9,learn=1,model=FILE]``
    (the local twin's service module, pretrained model unless ``model`` names a ModelUpdate or
    pretrained pickle; ``learn=1`` lets it learn from the replayed outcomes).
    """
    from tiertwin.jobs.experiments.whatif import LogTopics, run_whatif

    result = run_whatif(log, a, b, scenario=scenario, out_dir=out or log / "whatif",
                        topics=LogTopics(demands_topic, telemetry_topic, actions_topic))
    for side in ("a", "b"):
        s = result["policies"][side]
        console.print(f"{side.upper()} {s['spec']:<28} demands {s['demands']}, mean {s['latency_ms']['mean']:.1f} ms, "
                      f"p99 {s['latency_ms']['p99']:.1f} ms, deadline misses {s['deadline_miss_rate']:.1%}, "
                      f"placements {s['placements']}")
    console.print(f"same placement for {result['agreement']:.1%} of demands; report: {result['report']}")


@commands.command("linkemu")
@one_line_errors
def linkemu_cmd(
    listen: int = typer.Option(..., help="Port to accept clients on (127.0.0.1)."),
    upstream: str = typer.Option(..., help="HOST:PORT to forward to (loopback)."),
    link: List[str] = typer.Option([], "--link", help="ONE_WAY_MS[:JITTER_MS[:LOSS]]; repeat for a path."),
    seed: Optional[int] = typer.Option(None),
):
    """A TCP delay proxy emulating network links (latency, jitter, loss) until Ctrl-C."""
    from tiertwin.connectors.linkemu import LinkPath, parse_address, serve

    path = LinkPath.parse(link)
    console.print(f"127.0.0.1:{listen} -> {upstream}: {path.one_way_ms:g} ms one way over {len(path.links)} link(s)")
    serve(listen, parse_address(upstream), path, seed=seed)

"""Operator commands: subscribe to decision topics, archive and replay telemetry logs, report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tiertwin.jobs.cli.common import console, one_line_errors


DECISION_COLUMNS = ("decision_id", "tier", "twin_site", "kind", "ue_id", "cell_id", "target", "model_name", "model_version",
                    "confidence")


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
commands = typer.Typer()


@commands.command("subscribe")
@one_line_errors
def subscribe_cmd(
    topic: str = typer.Argument(..., help="Topic to read, e.g. tiertwin.actions.local."),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the earliest offset."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep waiting for new records (Ctrl-C stops)."),
    filter_: Optional[list[str]] = typer.Option(None, "--filter", help="FIELD=VALUE, e.g. ue=ue-0001 kind=handover tier=edge; repeatable."),
    fmt: str = typer.Option("table", "--format", help="table (for people) or jsonl (for scripts)."),
    limit: int = typer.Option(0, help="Stop after this many matching records (0 = no limit)."),
):
    """Decode a topic's Avro records for people (table) and scripts (jsonl); like `kcat -C`, typed."""
    from tiertwin.client import parse_filters, subscribe
    from tiertwin.errors import ConfigError

    if fmt not in ("table", "jsonl"):
        raise ConfigError(f"--format {fmt!r}: use table or jsonl")
    out = Console(width=200) if fmt == "table" else None
    n = 0
    try:
        for rec in subscribe(topic, from_beginning=from_beginning, follow=follow,
                             filters=parse_filters(filter_)):
            if fmt == "jsonl":
                print(json.dumps({"topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
                                  "timestamp_ms": rec.timestamp_ms, "schema": rec.schema, "value": rec.value},
                                 default=_json_default), flush=True)
            else:
                out.print(_table_row(rec), highlight=False, soft_wrap=True)
            n += 1
            if limit and n >= limit:
                break
    except KeyboardInterrupt:
        pass
    if fmt == "table":
        Console(stderr=True).print(f"{n} record(s)")


@commands.command("archive")
@one_line_errors
def archive_cmd(
    topics: list[str] = typer.Option(..., "--topics", "-t", help="Topics to archive; repeatable."),
    out: Path = typer.Option(..., "--out", "-o", help="Archive folder (Parquet, topic/date/hour partitions)."),
):
    """Copy every record now in the topics to Parquet files, with offsets and timestamps."""
    from tiertwin.connectors.archive import archive_topics

    with _progress() as progress:
        task = progress.add_task("archiving", total=None)
        counts = archive_topics(topics, out, on_progress=lambda n: progress.advance(task, n))
    for topic, count in counts.items():
        console.print(f"{topic:36} {count} records")
    console.print(f"archived {sum(counts.values())} records to {out}")


@commands.command("replay")
@one_line_errors
def replay_cmd(
    log_dir: Path = typer.Argument(..., help="Archive folder written by `tiertwin archive`."),
    to: Optional[str] = typer.Option(None, "--to", help="Topic to publish to (default: each record's original topic)."),
    topic: Optional[list[str]] = typer.Option(None, "--topic", help="Archived topic(s) to replay (default: all)."),
    speed: str = typer.Option("max", "--speed", help="1x (original pace), 10x, 0.5x … or max."),
    workers: int = typer.Option(min(4, os.cpu_count() or 1), "--workers", min=1, max=64,
                                help="Producer processes; each owns a share of the target partitions."),
):
    """Re-publish archived records in their original order per key, keeping inter-arrival times (scaled).

    Several topics are merged by timestamp. With more than one worker, each target
    partition is written by one worker process in archive order, so every partition
    gets the same records in the same order as with one.
    """
    from tiertwin.connectors.archive import (archived_count, archived_topics, parse_speed, read_archives, replay,
                                             replay_parallel)
    from tiertwin.connectors.kafka import KafkaSink

    factor = parse_speed(speed)
    selected = topic or archived_topics(log_dir)
    with _progress() as progress:
        if workers > 1:
            task = progress.add_task(f"{', '.join(selected)} ({workers} workers)", total=archived_count(log_dir, selected))
            total = replay_parallel(log_dir, selected, to, factor, workers,
                                    on_progress=lambda n: progress.advance(task, n))
        else:
            records = list(read_archives(log_dir, selected))
            task = progress.add_task(", ".join(selected), total=len(records))
            with KafkaSink(profile="throughput" if factor is None else "low-latency",
                           client_id="tiertwin-replay") as sink:
                total = replay(records, sink, to, factor, on_progress=lambda n: progress.advance(task, n))
    console.print(f"replayed {total} records from {log_dir} at {speed} with {workers} worker(s)")


@commands.command("report")
@one_line_errors
def report_cmd(
    log_dir: Path = typer.Argument(..., help="Archive folder written by `tiertwin archive`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where report.md and PNGs go (default: DIR/report)."),
):
    """Summarise an archive: decision latency per tier, deadline-miss rate, records per topic; PNG plots."""
    from tiertwin.jobs.experiments.report import write_report

    report = write_report(log_dir, out or log_dir / "report")
    table = Table("topic", "records")
    for name, count in report.records_per_topic.items():
        table.add_row(name, str(count))
    console.print(table)
    console.print(report.decision_latency)
    console.print(report.demand_outcomes)
    console.print(f"wrote {report.markdown} and {len(report.plots)} PNG plots")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)


def _json_default(value):
    return value.hex() if isinstance(value, bytes) else str(value)


def _table_row(rec) -> str:
    v = rec.value
    if rec.schema == "tiertwin.Decision":
        latency = (v["decided_ns"] - v["source_emitted_ns"]) / 1e6
        cells = [str(v.get(c)) for c in DECISION_COLUMNS] + [f"{latency:.2f}ms"]
        return "  ".join(cells)
    short = {k: val for k, val in v.items() if not isinstance(val, (bytes, list, dict))}
    return f"{rec.schema.removeprefix('tiertwin.')} p{rec.partition}@{rec.offset} " + \
        " ".join(f"{k}={val}" for k, val in list(short.items())[:12])

"""``tiertwin report DIR``: summarise an archive with polars and draw PNG plots with matplotlib.

Writes ``report.md`` and ``*.png`` to the output folder and returns the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from tiertwin.connectors.archive import archive_files, archived_topics
from tiertwin.errors import ConfigError
from tiertwin.stats import percentile_expr


@dataclass
class Report:
    records_per_topic: dict[str, int]
    decision_latency: pl.DataFrame  # per tier: n, mean, p50, p95, p99 (ms)
    demand_outcomes: pl.DataFrame   # per placement: n, miss rate, mean, p99 latency (ms)
    plots: list[Path] = field(default_factory=list)
    markdown: Path | None = None


def load_topic(log_dir: Path, topic: str) -> pl.DataFrame:
    files = archive_files(log_dir, topic)
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def _frames_of(log_dir: Path, schema: str) -> pl.DataFrame:
    frames = [df for t in archived_topics(log_dir) if not (df := load_topic(log_dir, t)).is_empty()
              and "schema" in df.columns and (df["schema"] == schema).any()]
    return pl.concat([f.filter(pl.col("schema") == schema) for f in frames], how="diagonal_relaxed") \
        if frames else pl.DataFrame()


def summarize(log_dir: Path) -> Report:
    topics = archived_topics(log_dir)
    if not topics:
        raise ConfigError(f"{log_dir} holds no archive (expected topic=<name>/ folders from `tiertwin archive`)")
    counts = {t: load_topic(log_dir, t).height for t in topics}
    decisions = _frames_of(log_dir, "tiertwin.Decision")
    if decisions.is_empty():
        latency = pl.DataFrame(schema={"tier": pl.String, "n": pl.UInt32, "mean_ms": pl.Float64,
                                       "p50_ms": pl.Float64, "p95_ms": pl.Float64, "p99_ms": pl.Float64})
    else:
        latency = (decisions.with_columns(((pl.col("decided_ns") - pl.col("source_emitted_ns")) / 1e6)
                                          .alias("latency_ms"))
                   .group_by("tier").agg(pl.len().alias("n"), pl.col("latency_ms").mean().alias("mean_ms"),
                                         *[percentile_expr("latency_ms", q).alias(f"p{q}_ms") for q in (50, 95, 99)])
                   .sort("tier"))
    outcomes = _frames_of(log_dir, "tiertwin.Outcome")
    if outcomes.is_empty() or "placement" not in outcomes.columns:
        demand = pl.DataFrame(schema={"placement": pl.String, "n": pl.UInt32, "deadline_miss_rate": pl.Float64,
                                      "mean_ms": pl.Float64, "p99_ms": pl.Float64})
    else:
        demand = (outcomes.filter(pl.col("kind") == "demand")
                  .group_by("placement")
                  .agg(pl.len().alias("n"), (1 - pl.col("deadline_met").cast(pl.Float64).mean())
                       .alias("deadline_miss_rate"), pl.col("latency_ms").mean().alias("mean_ms"),
                       percentile_expr("latency_ms", 99).alias("p99_ms"))
                  .sort("placement"))
    return Report(counts, latency, demand)


def write_report(log_dir: Path, out_dir: Path) -> Report:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = summarize(log_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(report.records_per_topic)
    ax.barh(names, [report.records_per_topic[n] for n in names], color="#4878a8")
    ax.set_xlabel("records")
    ax.set_title("Records per topic")
    fig.tight_layout()
    report.plots.append(_save(fig, out_dir / "records_per_topic.png"))

    decisions = _frames_of(log_dir, "tiertwin.Decision")
    fig, ax = plt.subplots(figsize=(7, 4))
    if not decisions.is_empty():
        for tier in sorted(decisions["tier"].unique().to_list()):
            values = ((decisions.filter(pl.col("tier") == tier)["decided_ns"]
                       - decisions.filter(pl.col("tier") == tier)["source_emitted_ns"]) / 1e6).sort()
            ax.plot(values.to_numpy(), [(i + 1) / len(values) for i in range(len(values))], label=tier)
        ax.set_xscale("log")
        ax.legend()
    ax.set_xlabel("decision latency (ms, record produced -> decision made)")
    ax.set_ylabel("CDF")
    ax.set_title("Decision latency per tier")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    report.plots.append(_save(fig, out_dir / "decision_latency_cdf.png"))

    outcomes = _frames_of(log_dir, "tiertwin.Outcome")
    fig, ax = plt.subplots(figsize=(7, 4))
    if not outcomes.is_empty() and "placement" in outcomes.columns:
        demand = outcomes.filter(pl.col("kind") == "demand")
        for placement in sorted(p for p in demand["placement"].unique().to_list() if p):
            ax.hist(demand.filter(pl.col("placement") == placement)["latency_ms"].to_numpy(), bins=50,
                    alpha=0.6, label=placement)
        ax.legend()
    ax.set_xlabel("measured demand latency (ms)")
    ax.set_ylabel("demands")
    ax.set_title("Demand latency by placement")
    fig.tight_layout()
    report.plots.append(_save(fig, out_dir / "demand_latency.png"))

    lines = ["# tiertwin report", "", f"Archive: `{log_dir}`", "", "## Records per topic", "",
             "| topic | records |", "|---|---|"]
    lines += [f"| {t} | {n} |" for t, n in report.records_per_topic.items()]
    lines += ["", "## Decision latency per tier (ms)", "", _markdown_table(report.decision_latency),
              "", "## Demand outcomes per placement", "", _markdown_table(report.demand_outcomes), ""]
    lines += [f"![{p.stem}]({p.name})" for p in report.plots]
    report.markdown = out_dir / "report.md"
    report.markdown.write_text("\n".join(lines) + "\n")
    return report


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _markdown_table(df: pl.DataFrame) -> str:
    if df.is_empty():
        return "_none_"
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    rows = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    rows += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(rows)

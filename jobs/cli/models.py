"""``tiertwin models``: the versions on the models topic, and an operator's promote / reject / rollback.

A command is a signed ModelUpdate with ``action`` set (promote, reject or rollback), no payload, keyed
``<name>/control`` on the models topic (compacted apart from the models themselves). Every agent and
device runtime reads the topic whole, verifies the signature with the deployment key and hands the
command to the model's slot (:meth:`~tiertwin.pipelines.models.ModelSlot.command`):

* ``promote NAME V``: V, running in shadow, goes live now (the previous model stays warm on probation,
  so a loss still rolls it back by itself);
* ``reject NAME V``: V, in shadow, is dropped (or, if V is live after a promotion, rolled back);
* ``rollback NAME V``: V, live after a promotion, gives way to the model it replaced.

Twins that do not hold V in that state ignore the command.
"""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table

from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.topics import MODEL_STATUS, MODELS

models_app = typer.Typer(help="Model versions on the models topic; promote, reject or roll back one by hand "
                              "(signed commands the twins honour).", no_args_is_help=True)


def model_rows(updates: list[dict]) -> list[dict]:
    """One row per published version (newest first per name), with whether it verifies and the commands about it."""
    from tiertwin.pipelines.models import PUBLISH, ModelRejected, verify_update

    rows: dict[tuple[str, int], dict] = {}
    commands: list[dict] = []
    for u in updates:
        try:
            verify_update(u)
            verified = "ok"
        except ModelRejected as exc:
            verified = exc.reason
        if u.get("action", PUBLISH) != PUBLISH:
            commands.append({**u, "verified": verified})
            continue
        rows[(u["model_name"], u["version"])] = {
            "name": u["model_name"], "version": u["version"], "digest": u.get("digest", "")[:16],
            "verified": verified, "producer": u["producer"], "trained_on": u["trained_on"],
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(u["created_ms"] / 1000)),
            "metrics": {k: round(v, 4) for k, v in u["metrics"].items()}, "commands": []}
    for c in commands:
        row = rows.get((c["model_name"], c["version"]))
        if row is not None and c["verified"] == "ok":
            row["commands"].append(c["action"])
    return sorted(rows.values(), key=lambda r: (r["name"], -r["version"]))


def status_rows(statuses: list[dict]) -> list[dict]:
    """The newest ModelStatus per model and instance (the compacted topic may still hold older ones)."""
    newest: dict[tuple[str, str], dict] = {}
    for s in statuses:
        newest[(s["model_name"], s["instance"])] = s
    return [{"name": s["model_name"], "tier": s["tier"], "instance": s["instance"], "live": s["live_version"],
             "revision": s["revision"], "shadow": s["shadow_version"], "last_event": s["event"],
             "event_version": s["version"], "figures": {k: round(v, 4) for k, v in s["figures"].items()},
             "at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s["at_ms"] / 1000))}
            for _, s in sorted(newest.items())]


@models_app.command("list")
@one_line_errors
def list_cmd(topic: str = typer.Option(MODELS, help="The models topic."),
             status_topic: str = typer.Option(MODEL_STATUS, help="The topic of the agents' ModelStatus records."),
             fmt: str = typer.Option("table", "--format", help="table (for people) or json (for scripts).")):
    """Every model version on the models topic (compacted: the newest per name, plus the last command), whether
    its signature and digest verify with this deployment's key, its figures and the commands about it; then each
    agent instance's live version, revision, shadow and last transition with its figures."""
    from tiertwin.errors import ConfigError
    from tiertwin.pipelines.models import read_models_topic

    if fmt not in ("table", "json"):
        raise ConfigError(f"--format must be table or json, not {fmt!r}")
    rows = model_rows(read_models_topic(topic=topic))
    instances = status_rows(read_models_topic(topic=status_topic, schema="tiertwin.ModelStatus"))
    if fmt == "json":
        print(json.dumps({"versions": rows, "instances": instances}, indent=2))
        return
    table = Table("name", "version", "digest", "verified", "producer", "created (UTC)", "metrics", "commands",
                  title=f"versions on {topic}")
    for r in rows:
        table.add_row(r["name"], str(r["version"]), r["digest"], r["verified"], r["producer"], r["created"],
                      ", ".join(f"{k}={v:g}" for k, v in r["metrics"].items()), ", ".join(r["commands"]))
    console.print(table if rows else f"no models on {topic}")
    table = Table("name", "tier", "instance", "live", "revision", "shadow", "last event", "figures", "at (UTC)",
                  title=f"instances ({status_topic})")
    for r in instances:
        table.add_row(r["name"], r["tier"], r["instance"], str(r["live"]), str(r["revision"]),
                      "" if r["shadow"] is None else str(r["shadow"]), f"{r['last_event']} v{r['event_version']}",
                      ", ".join(f"{k}={v:g}" for k, v in r["figures"].items()), r["at"])
    console.print(table if instances else f"no agent has reported on {status_topic}")


def _command(action: str, name: str, version: int, topic: str) -> None:
    from tiertwin.connectors.kafka import KafkaSink
    from tiertwin.pipelines.models import publish_command

    with KafkaSink(client_id="tiertwin-models") as sink:
        publish_command(sink, action, name, version, topic=topic)
    console.print(f"{action} {name} v{version}: signed command published to {topic} (key {name}/control)")


@models_app.command("promote")
@one_line_errors
def promote_cmd(name: str = typer.Argument(..., help="Model name, e.g. demand-latency."),
                version: int = typer.Argument(..., help="The version running in shadow to make live."),
                topic: str = typer.Option(MODELS, help="The models topic.")):
    """Make VERSION (in shadow) live now on every twin that shadows it; it stays on probation."""
    _command("promote", name, version, topic)


@models_app.command("reject")
@one_line_errors
def reject_cmd(name: str = typer.Argument(..., help="Model name."),
               version: int = typer.Argument(..., help="The version to drop (in shadow) or roll back (live on probation)."),
               topic: str = typer.Option(MODELS, help="The models topic.")):
    """Drop VERSION from shadow on every twin (never promoted afterwards)."""
    _command("reject", name, version, topic)


@models_app.command("rollback")
@one_line_errors
def rollback_cmd(name: str = typer.Argument(..., help="Model name."),
                 version: int = typer.Argument(..., help="The live version to roll back."),
                 topic: str = typer.Option(MODELS, help="The models topic.")):
    """Roll VERSION back to the model it replaced, on every twin that still keeps that one warm (probation)."""
    _command("rollback", name, version, topic)

"""MkDocs hooks: pages that show the project's data files as they are, so they cannot drift.

A page asks for a generated block with an HTML comment on a line of its own:

* ``<!-- tiertwin:topology -->``: every topic of the topology (``tiertwin topics apply``
  reads the same file through ``load_topology``) as a table;
* ``<!-- tiertwin:schemas -->``: every Avro contract the registry knows, one table of
  fields (type, unit, valid range, default, doc) per record.

An unknown marker fails the build, so a typo cannot leave a page silently empty.

Before the build, ``on_config`` lays the installed package out as it is imported
(``build/docs-packages/tiertwin/``, symlinks only): pyproject maps ``tiertwin.pipelines`` to
the top-level ``pipelines/`` folder and so on, which griffe, reading sources without
importing them, cannot follow. mkdocstrings reads the tree through its ``paths`` option.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
import warnings
from importlib import resources
from pathlib import Path

_MARKER = re.compile(r"^<!-- tiertwin:([a-z-]+) -->$", re.MULTILINE)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _topology() -> str:
    with warnings.catch_warnings():  # kafka-python's importlib.resources calls, on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from tiertwin.connectors.topics import load_topology

    rows = ["| topic | schema | key | partitions | retention | cleanup | producers → consumers | what |",
            "|---|---|---|---:|---|---|---|---|"]
    for t in load_topology().topics:
        retention = "forever" if t.retention_ms < 0 else f"{t.retention_ms / 3_600_000:g} h"
        flow = f"{', '.join(t.producers) or '–'} → {', '.join(t.consumers) or '–'}"
        rows.append(f"| `{t.name}` | {t.schema_ or '(pickled state)'} | `{_cell(t.key)}` | {t.partitions} "
                    f"| {retention} | {t.cleanup_policy} | {_cell(flow)} | {_cell(t.doc)} |")
    return "\n".join(rows)


def _type_name(avro_type: object) -> str:
    if isinstance(avro_type, list):
        return " | ".join(_type_name(t) for t in avro_type)
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if kind == "enum":
            return f"enum {avro_type['name']} ({', '.join(avro_type['symbols'])})"
        if kind == "array":
            return f"array of {_type_name(avro_type['items'])}"
        if kind == "map":
            return f"map of {_type_name(avro_type['values'])}"
        if kind == "record":
            return f"record {avro_type['name']}"
        return _type_name(kind)
    return str(avro_type)


def _schemas() -> str:
    folder = resources.files("tiertwin.schemas")
    parts = []
    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".avsc")), key=lambda p: p.name):
        schema = json.loads(path.read_text())
        parts += [f"### {schema['name']}", "", _cell(schema.get("doc", "")), "",
                  f"`schemas/{path.name}`", "",
                  "| field | type | unit | range | default | doc |", "|---|---|---|---|---|---|"]
        for field in schema["fields"]:
            default = f"`{json.dumps(field['default'])}`" if "default" in field else ""
            valid = "–".join(map(str, field["range"])) if "range" in field else ""
            parts.append(f"| `{field['name']}` | {_cell(_type_name(field['type']))} | {_cell(field.get('unit', ''))} "
                         f"| {valid} | {default} | {_cell(field.get('doc', ''))} |")
        parts.append("")
    return "\n".join(parts)


REPO = Path(__file__).resolve().parents[2]


def package_tree(root: Path, out: Path) -> Path:
    """Mirror pyproject's ``package-dir`` mapping as a folder tree of symlinks under ``out``."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    if out.exists():
        shutil.rmtree(out)
    for package, folder in sorted(setuptools["package-dir"].items()):
        target = out.joinpath(*package.split("."))
        if "." not in package:  # the root package: a real folder, its children linked one by one
            target.mkdir(parents=True)
            for child in (root / folder).iterdir():
                if child.name != "__pycache__":
                    (target / child.name).symlink_to(child.resolve())
        elif not target.exists():
            target.symlink_to((root / folder).resolve(), target_is_directory=True)
    return out


def on_startup(command, dirty):  # noqa: ANN001, ANN201 - MkDocs hook signature
    # Laid out at start-up, not in on_config: mkdocstrings reads its `paths` in its own on_config,
    # which runs before a hook's, so on a fresh clone (no build/ yet) the first build found nothing.
    package_tree(REPO, REPO / "build" / "docs-packages")


_BLOCKS = {"topology": _topology, "schemas": _schemas}


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 - MkDocs hook signature
    def render(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in _BLOCKS:
            raise ValueError(f"{page.file.src_path}: unknown generated block <!-- tiertwin:{name} -->; "
                             f"known: {', '.join(sorted(_BLOCKS))}")
        return _BLOCKS[name]()

    return _MARKER.sub(render, markdown)

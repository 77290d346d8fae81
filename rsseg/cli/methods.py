"""``rsseg methods [NAME] [--json]``: every registered pretext, regularizer and tool.

One row per method: name, kind, the data it needs (two views, labels, domains), a one-line
description and the paper. With ``NAME``, that method alone with its config keys and defaults
(the keys ``--set pretext.params.KEY=VALUE`` accepts).
"""

from __future__ import annotations

import json as _json

import typer
from rich.console import Console
from rich.table import Table

from rsseg.cli import app


@app.command()
def methods(
    name: str | None = typer.Argument(None, help="Show one method with its config defaults.",
                                      show_default=False),
    json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List the registered methods: kind, data needed, description, paper reference."""
    from rsseg.registry import describe_methods, method_class

    records = describe_methods()
    if name is not None:
        method_class(name)  # ConfigError listing the valid names
        records = [r for r in records if r["name"] == name]
    if json:
        typer.echo(_json.dumps(records, indent=2))
        return
    console = Console(width=max(Console().width, 120))
    if name is not None:
        _show_one(console, records[0])
        return
    table = Table("name", "kind", "needs", "description", "reference",
                  title="rsseg methods (details: rsseg methods NAME)")
    for r in records:
        table.add_row(r["name"], r["kind"], ", ".join(r["needs"]) or "-", r["description"],
                      r["reference"])
    console.print(table)


def _show_one(console: Console, record: dict) -> None:
    console.print(f"[bold]{record['name']}[/bold] ({record['kind']}): {record['description']}")
    console.print(f"reference: {record['reference']}")
    console.print(f"needs: {', '.join(record['needs']) or '-'}")
    table = Table("config key", "default", title="config (pretext.params / method params)")
    for key, value in _flatten(record["config"]):
        table.add_row(key, _json.dumps(value))
    console.print(table)


def _flatten(config: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, value in config.items():
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows

"""Render the service settings (core/settings.py) as a markdown table or as an ``.env.example`` file.

Usage: python scripts/config_table.py [--format markdown|env] [--output PATH | --inject DOC.md]
(--inject replaces the table between the DOC's ``<!-- config-table -->`` and ``<!-- /config-table -->`` lines.)
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402

# Variables that docker-compose.yml sets itself for its containers (its own services' addresses).
COMPOSE_WIRED = ("RECDISTILL_HOME", "ARTIFACT_DIR", "DATABASE_URL", "CELERY_BROKER_URL")

# Variables read by compose or by the images, not by Settings: name -> (example value, description).
SERVICE_VARS: dict[str, tuple[str, str]] = {
    "POSTGRES_PASSWORD": (
        "recdistill",
        "Password of the compose Postgres user `recdistill` (used in the DATABASE_URL that compose builds). "
        "Set it before the first `docker compose up`: Postgres keeps the first one it was started with.",
    ),
    "WEB_CONCURRENCY": (
        "1",
        "Number of API processes in the api container, each listening on its own socket (SO_REUSEPORT); each "
        "loads the active serving bundle.",
    ),
}


def setting_rows() -> list[dict[str, str]]:
    """One row per Settings field: env name, default (as text) and description."""
    rows = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if not isinstance(alias, str):
            raise ValueError(f"Settings.{name} has no single environment variable name (validation_alias)")
        if not field.description:
            raise ValueError(f"Settings.{name} ({alias}) has no description")
        rows.append({"env": alias, "default": _default_text(field.default), "description": field.description})
    return rows


def _default_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        if str(value) in ("", "."):  # a derived default: the description says what it is
            return ""
        return value.as_posix() if value.is_absolute() else f"./{value.as_posix()}"
    return str(value)


def markdown_table() -> str:
    """The configuration table of docs/deploy.md."""
    lines = ["| Variable | Default | Description |", "|---|---|---|"]
    for row in setting_rows():
        default = f"`{row['default']}`" if row["default"] else "(see description)"
        description = row["description"].replace("|", "\\|")
        lines.append(f"| `{row['env']}` | {default} | {description} |")
    for env, (value, description) in SERVICE_VARS.items():
        lines.append(f"| `{env}` | `{value}` | (compose only) {description} |")
    return "\n".join(lines) + "\n"


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, width=100)]


def env_example() -> str:
    """An ``.env.example`` documenting every setting, each commented out at its default."""
    out = [
        "# recdistill settings: copy to .env and uncomment what you change.",
        "# docker compose passes .env to every recdistill container (env_file) and reads it for ${...} values;",
        "# for a local `recdistill serve`, export it first: set -a; . ./.env; set +a",
        "# Generated from core/settings.py by scripts/config_table.py --format env (tests check they agree).",
        "",
    ]
    for row in setting_rows():
        out += _comment(row["description"])
        if row["env"] in COMPOSE_WIRED:
            out.append("# (docker-compose.yml sets this itself for its containers: a value here applies to local runs only.)")
        out += [f"# {row['env']}={row['default']}", ""]
    out.append("# --- read by docker compose and the images, not by recdistill itself ---")
    for env, (value, description) in SERVICE_VARS.items():
        out += _comment(description)
        out += [f"# {env}={value}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


BEGIN, END = "<!-- config-table -->", "<!-- /config-table -->"


def inject(doc: str, table: str) -> str:
    """``doc`` with the text between its BEGIN and END marker lines replaced by ``table``."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no {BEGIN} ... {END} block to fill")
    return doc[: start + len(BEGIN)] + "\n" + table + doc[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--format", choices=("markdown", "env"), default="markdown")
    parser.add_argument("--output", type=Path, help="write here instead of standard output")
    parser.add_argument("--inject", type=Path, help="fill the config-table block of this markdown file")
    args = parser.parse_args(argv)
    text = markdown_table() if args.format == "markdown" else env_example()
    if args.inject:
        args.inject.write_text(inject(args.inject.read_text(encoding="utf-8"), text), encoding="utf-8")
    elif args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

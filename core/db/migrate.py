"""Run the Alembic migrations programmatically (works from a source tree and from an installed package)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from core.settings import get_settings

log = logging.getLogger(__name__)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config whose script_location is the installed ``migrations`` package."""
    cfg = Config()
    # __path__ rather than __file__: an editable install may expose the folder as a namespace package.
    cfg.set_main_option("script_location", str(Path(next(iter(migrations.__path__))).resolve()))
    # '%' is ConfigParser interpolation syntax; URLs may contain it (escaped passwords).
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade_head(url: str | None = None) -> None:
    """Bring the database at ``url`` (default: settings) to the newest revision."""
    command.upgrade(alembic_config(url), "head")
    log.info("database migrated to head")


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    engine = create_engine(url or get_settings().database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()

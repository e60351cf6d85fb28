"""Database layer: SQLAlchemy 2 tables (``models``), engines/sessions (``session``), repository (``repo``)."""

from core.db.models import Activation, Base, Dataset, Job, Model
from core.db.repo import ConflictError, NotFoundError
from core.db.session import get_engine, session_scope

__all__ = [
    "Activation",
    "Base",
    "ConflictError",
    "Dataset",
    "Job",
    "Model",
    "NotFoundError",
    "get_engine",
    "session_scope",
]

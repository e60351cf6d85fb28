"""Alembic migrations for the service database (``alembic upgrade head`` or ``recdistill migrate``)."""

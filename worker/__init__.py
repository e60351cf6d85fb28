"""Celery worker: the app (``celery_app``), thin tasks that take job ids, and the recovery sweeper."""

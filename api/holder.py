"""The active serving bundle of this API process, and the poller that hot-swaps it on activation.

A swap is one attribute assignment; requests read ``holder.bundle`` once, so in-flight ones finish on
the bundle they started with.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from core.db import repo
from core.index import BundleError, IndexSpec, ServingBundle

logger = logging.getLogger(__name__)

RETRY_FAILED_S = 30.0


def bundle_dir(artifact_dir: Path, artifact_path: str) -> Path:
    """``<artifact_dir>/<artifact_path>/serving``, refusing paths that leave the artifact store."""
    root = artifact_dir.resolve()
    path = (root / artifact_path / "serving").resolve()
    if not path.is_relative_to(root):
        raise BundleError(f"artifact path {artifact_path!r} points outside the artifact store")
    return path


class IndexHolder:
    """Holds the active ``ServingBundle`` (or None) and the activation id it came from."""

    def __init__(self, sessions: sessionmaker[Session], artifact_dir: Path, index: IndexSpec = IndexSpec()) -> None:
        self.sessions = sessions
        self.artifact_dir = artifact_dir
        # Only for version 1 bundles (no saved index, one is built at load); others bring their own.
        self.index = index
        self.bundle: ServingBundle | None = None
        self.activation_id: int | None = None
        # Serialises loads (poller vs POST /activate) so one activation is loaded once.
        self.lock = threading.Lock()
        self._failed: dict[int, float] = {}

    def load_model(self, session: Session, model_id: str) -> ServingBundle:
        """Load (but do not install) the bundle of ``model_id``: memory-mapped, its index built by the worker."""
        try:
            model = repo.get_model(session, model_id)
        except repo.NotFoundError as exc:
            raise BundleError(f"model {model_id} has no row") from exc
        return ServingBundle.load(bundle_dir(self.artifact_dir, model.artifact_path), self.index)

    def install(self, bundle: ServingBundle | None, activation_id: int | None) -> None:
        """Swap in ``bundle`` (a single reference assignment; readers never see a half state)."""
        self.bundle = bundle
        self.activation_id = activation_id
        logger.info("serving model %s (activation %s)", bundle and bundle.model_id, activation_id)

    def newest_activation(self) -> tuple[int, str] | None:
        with self.sessions() as session:
            return repo.newest_activation_ids(session)

    def refresh(self) -> bool:
        """Load and install the newest activation if it is not the one served; True when swapped."""
        newest = self.newest_activation()
        if newest is None or newest[0] == self.activation_id:
            return False
        act_id, model_id = newest
        failed_at = self._failed.get(act_id)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_S:
            return False
        with self.lock:
            if self.activation_id is not None and self.activation_id >= act_id:
                return False  # someone (POST /activate) installed it, or a newer one, meanwhile
            try:
                with self.sessions() as session:
                    bundle = self.load_model(session, model_id)
            except (BundleError, OSError) as exc:
                self._failed[act_id] = time.monotonic()
                logger.error("cannot load model %s of activation %d: %s", model_id, act_id, exc)
                return False
            self.install(bundle, act_id)
            return True

    async def poll(self, interval_s: float) -> None:
        """Forever: check the newest activation every ``interval_s`` and swap off the request path."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.refresh)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly unreachable: keep serving, try again
                logger.exception("activation poll failed")

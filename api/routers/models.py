"""``/models``: the registry (metrics beside the teacher's, size, compression), activation, download."""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import HolderDep, PageLimit, PageOffset, SessionDep, SettingsDep
from api.errors import Conflict, NotFound
from api.holder import bundle_dir
from api.schemas import (
    ID_PATTERN,
    ActivationPublic,
    IndexPublic,
    ModelPublic,
    ModelReportPublic,
    ModelsPublic,
)
from core.config import ModelRole, ModelRoleName
from core.db import repo
from core.db.models import Model
from core.index import BundleError, read_index_info
from core.report import model_report

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/models", tags=["models"])

ModelId = Annotated[str, PathParam(pattern=ID_PATTERN, description="32-character hex model id.")]


def _public(row: Model, active_id: str | None) -> ModelPublic:
    out = ModelPublic.model_validate(row)
    out.active = row.id == active_id
    return out


def _active_id(session: SessionDep) -> str | None:
    act = repo.active_activation(session)
    return None if act is None else act.model_id


@router.get("", response_model=ModelsPublic)
def list_models(
    session: SessionDep,
    role: Annotated[ModelRoleName | None, Query(description="Only this role.")] = None,
    job_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: PageLimit = 100,
    offset: PageOffset = 0,
) -> ModelsPublic:
    rows = repo.list_models(session, role=role, job_id=job_id, limit=limit, offset=offset)
    active = _active_id(session)
    return ModelsPublic(data=[_public(r, active) for r in rows], count=len(rows))


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model_id: ModelId, session: SessionDep, settings: SettingsDep) -> ModelPublic:
    """A model's row, and for a served student the FAISS index its bundle holds (kind, parameters, recall@10
    against exact search measured when the bundle was built)."""
    row = repo.get_model(session, model_id)
    out = _public(row, _active_id(session))
    if row.role == ModelRole.STUDENT and row.artifact_path:
        try:
            info = read_index_info(bundle_dir(settings.artifact_dir, row.artifact_path))
        except BundleError:
            info = None
        out.index = None if info is None else IndexPublic.model_validate(info)
    return out


@router.get("/{model_id}/report", response_model=ModelReportPublic)
def get_report(model_id: ModelId, session: SessionDep) -> ModelReportPublic:
    """The student's compression report: test NDCG/Recall@10/20, parameters, bytes on disk and recommend
    p50/p99 beside its teacher's (all measured by its job), N x smaller, and the gap closed when a
    student-alone run (method none, same data set, split, seed and student) is known. 409 for a teacher."""
    try:
        return ModelReportPublic.model_validate(model_report(session, model_id))
    except repo.ConflictError as exc:
        raise Conflict(str(exc), code="not_a_student") from None


@router.post("/{model_id}/activate", response_model=ActivationPublic)
def activate_model(model_id: ModelId, session: SessionDep, holder: HolderDep) -> ActivationPublic:
    """Serve this student (loaded here before replying; other API processes pick it up within ~1 s).

    Rollback: activate the previous model id again (it is kept, and named in ``previous_model_id``).
    """
    with holder.lock:
        act = repo.activate_model(session, model_id)  # 404 unknown, 409 teacher or job not succeeded
        try:
            bundle = holder.load_model(session, model_id)
        except (BundleError, OSError) as exc:
            session.rollback()
            raise Conflict(f"model {model_id} cannot be served: {exc}", code="bundle_unloadable") from None
        session.commit()
        holder.install(bundle, act.id)
    return ActivationPublic(activation_id=act.id, model_id=act.model_id, previous_model_id=act.previous_model_id,
                            activated_at=act.activated_at, n_items=bundle.n_items)


def _zip_checkpoint(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not any(p.suffix == ".safetensors" for p in files):
        raise NotFound(f"model checkpoint file (.safetensors) is missing in {folder.name}", code="checkpoint_missing")
    fd, name = tempfile.mkstemp(suffix=".zip")
    os.close(fd)
    with zipfile.ZipFile(name, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in files:
            zf.write(path, arcname=path.name)
    return Path(name)


@router.get("/{model_id}/checkpoint", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}, "description": "safetensors + manifest.json"}})
def download_checkpoint(model_id: ModelId, session: SessionDep, settings: SettingsDep) -> FileResponse:
    row = repo.get_model(session, model_id)
    folder = bundle_dir(settings.artifact_dir, row.artifact_path).parent
    if not folder.is_dir():
        raise NotFound(f"artifacts of model {model_id} are missing", code="checkpoint_missing")
    archive = _zip_checkpoint(folder)
    return FileResponse(archive, media_type="application/zip", filename=f"model-{model_id}.zip",
                        background=BackgroundTask(archive.unlink, missing_ok=True))

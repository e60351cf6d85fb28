"""``/datasets``: streamed upload, validation in a child process (api.ingest), listing, detail and deletion."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from api.deps import PageLimit, PageOffset, SessionDep, SettingsDep
from api.errors import InvalidInput, describe_validation
from api.ingest import IngestRunner
from api.schemas import (
    ID_PATTERN,
    SEPARATORS,
    DatasetCreate,
    DatasetPublic,
    DatasetsPublic,
    check_filename,
    check_safe_name,
)
from api.upload import receive_upload
from core.db import repo
from core.db.models import new_id
from core.ingest import IngestRequest, release_owner, write_owner
from core.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/datasets", tags=["datasets"])

DatasetId = Annotated[str, PathParam(pattern=ID_PATTERN, description="32-character hex dataset id.")]
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".inter": "inter", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz")

_FORM_FIELDS: dict[str, dict[str, Any]] = {
    name: {"type": "string", "description": field.description or ""} for name, field in DatasetCreate.model_fields.items()
}
_FORM_FIELDS["format"]["enum"] = sorted(set(EXTENSIONS.values()))
_FORM_FIELDS["sep"]["enum"] = [*sorted(SEPARATORS), "\\t"]
_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {
            "type": "string", "format": "binary",
            "description": f"CSV, TSV, Parquet or RecBole .inter ({', '.join(sorted(EXTENSIONS))}), optionally "
            f"compressed ({', '.join(COMPRESSIONS)}). At most RECDISTILL_MAX_UPLOAD_MB as sent and "
            "RECDISTILL_MAX_UPLOAD_DECOMPRESSED_MB once decompressed; it must hold at least 2 users and 2 items "
            "and a user with 2 or more items (one to hold out).",
        },
        **_FORM_FIELDS,
    },
    "additionalProperties": False,
}
_CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "The file is larger than RECDISTILL_MAX_UPLOAD_MB, or than "
          "RECDISTILL_MAX_UPLOAD_DECOMPRESSED_MB once decompressed, or parsing it passed "
          "RECDISTILL_INGEST_TIMEOUT / RECDISTILL_INGEST_MEMORY_MB."},
    422: {"description": "Malformed multipart body, bad form field, unreadable or untrainable data."},
    503: {"description": "All RECDISTILL_INGEST_CONCURRENCY parse slots stayed busy for RECDISTILL_INGEST_WAIT "
          "seconds; see Retry-After."},
}


def _format_of(filename: str, declared: str | None) -> tuple[str, str]:
    """(format, compression suffix) from the declared format or the client file name's extension."""
    suffixes = [s.lower() for s in Path(filename).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else ""
    if declared is not None:
        return declared, compression
    ext = suffixes[-1] if suffixes else ""
    if ext not in EXTENSIONS:
        raise InvalidInput(
            f"filename: cannot tell the format from extension {ext or '(none)'!r}; use one of "
            f"{', '.join(sorted(EXTENSIONS))} or pass the 'format' field",
            code="unknown_format",
        )
    return EXTENSIONS[ext], compression


def _parse_form(fields: dict[str, str]) -> DatasetCreate:
    try:
        return DatasetCreate.model_validate({k: v for k, v in fields.items() if v != "" or k == "name"})
    except ValidationError as exc:
        text, _ = describe_validation(exc.errors())
        raise InvalidInput(text, code="validation_error") from None


def _default_name(filename: str, dataset_id: str) -> str:
    """The file name's stem when it passes the same check as an explicit name, else ``dataset-<id prefix>``."""
    try:
        return check_safe_name(Path(filename).name.split(".")[0], "name")
    except ValueError:
        return f"dataset-{dataset_id[:8]}"


def _insert(sessions: sessionmaker[Session], settings: Settings, dataset_id: str, form: DatasetCreate, filename: str,
            data: Path, fmt: str, size: int, summary: dict[str, Any]) -> DatasetPublic:
    """Insert the row of a validated upload; runs in a worker thread."""
    with sessions() as session:
        row = repo.create_dataset(
            session, id=dataset_id, name=form.name or _default_name(filename, dataset_id),
            original_filename=filename, path=str(data.relative_to(settings.artifact_dir)), format=fmt,
            sep=form.sep, user_col=form.user_col, item_col=form.item_col, rating_col=form.rating_col,
            timestamp_col=form.timestamp_col, rating_threshold=form.rating_threshold,
            n_users=int(summary["n_users"]), n_items=int(summary["n_items"]),
            n_interactions=int(summary["n_interactions"]), density=float(summary["density"]), size_bytes=size,
        )
        public = DatasetPublic.model_validate(row)
        session.commit()
    return public


@router.post(
    "", status_code=201, response_model=DatasetPublic,
    summary="Upload an interaction file (multipart, streamed to disk)", responses=_CREATE_RESPONSES,
    openapi_extra={"requestBody": {"required": True,
                                   "content": {"multipart/form-data": {"schema": _FORM_SCHEMA}}}},
)
async def create_dataset(request: Request, settings: SettingsDep) -> DatasetPublic:
    dataset_id = new_id()
    folder = settings.artifact_dir / "datasets" / dataset_id
    folder.mkdir(parents=True)
    write_owner(folder)
    part = folder / "upload.part"
    try:
        upload = await receive_upload(request, part, settings.max_upload_mb * 1024 * 1024)
        form = _parse_form(upload.fields)
        filename = upload.filename or ""
        try:
            check_filename(filename)
        except ValueError as exc:
            raise InvalidInput(str(exc), code="invalid_filename") from None
        fmt, compression = _format_of(filename, form.format)
        if upload.size == 0:
            raise InvalidInput(f"file: {filename!r} is empty", code="empty_file")
        data = folder / f"data.{fmt}{compression}"
        os.replace(part, data)
        runner: IngestRunner = request.app.state.ingest
        summary = await runner.summarize(
            IngestRequest(
                path=str(data), fmt=fmt, user_col=form.user_col, item_col=form.item_col, rating_col=form.rating_col,
                timestamp_col=form.timestamp_col, sep=form.sep, rating_threshold=form.rating_threshold,
                max_decompressed_bytes=settings.max_upload_decompressed_mb * 1024 * 1024,
                timeout_s=settings.ingest_timeout_s,
            ),
            filename,
        )
        public = await anyio.to_thread.run_sync(
            _insert, request.app.state.sessions, settings, dataset_id, form, filename, data, fmt, upload.size, summary)
        release_owner(folder)
        return public
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@router.get("", response_model=DatasetsPublic)
def list_datasets(
    session: SessionDep,
    limit: PageLimit = 100,
    offset: PageOffset = 0,
) -> DatasetsPublic:
    rows = repo.list_datasets(session, limit=limit, offset=offset)
    return DatasetsPublic(data=[DatasetPublic.model_validate(r) for r in rows], count=len(rows))


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: DatasetId, session: SessionDep) -> DatasetPublic:
    return DatasetPublic.model_validate(repo.get_dataset(session, dataset_id))


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: DatasetId, session: SessionDep, settings: SettingsDep) -> None:
    row = repo.delete_dataset(session, dataset_id)  # ConflictError (409) while a job uses it
    folder = (settings.artifact_dir / row.path).parent
    session.commit()
    if folder.resolve().is_relative_to((settings.artifact_dir / "datasets").resolve()):
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("deleted dataset %s", dataset_id)

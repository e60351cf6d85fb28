"""``/datasets``: streamed upload + validation, listing, detail and deletion (files included)."""

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

from api.deps import PageLimit, PageOffset, ReadAuth, SessionDep, SettingsDep, WriteAuth
from api.errors import InvalidInput, describe_validation
from api.schemas import ID_PATTERN, DatasetCreate, DatasetPublic, DatasetsPublic, check_filename
from api.upload import receive_upload
from core.data import DataError, load_interactions
from core.db import repo
from core.db.models import new_id
from core.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/datasets", tags=["datasets"])

DatasetId = Annotated[str, PathParam(pattern=ID_PATTERN, description="32-character hex dataset id.")]
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".inter": "inter", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz")

def _form_property(schema: dict[str, Any]) -> dict[str, Any]:
    # A form field is text or absent, never null: document the non-null branch of an optional field.
    branch = next(b for b in schema.get("anyOf", [schema]) if b.get("type") != "null")
    return {**branch, "description": schema.get("description", "")}


_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "CSV, TSV, Parquet or RecBole .inter"},
        **{name: _form_property(prop) for name, prop in DatasetCreate.model_json_schema()["properties"].items()},
    },
    "additionalProperties": False,
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


def _store(sessions: sessionmaker[Session], settings: Settings, dataset_id: str, form: DatasetCreate, filename: str, data: Path, fmt: str,
           size: int) -> DatasetPublic:
    """Parse the stored file (validates it) and insert the row; runs in a worker thread."""
    try:
        inter = load_interactions(
            data, user_col=form.user_col, item_col=form.item_col, rating_col=form.rating_col,
            timestamp_col=form.timestamp_col, fmt=fmt, sep=form.sep, rating_threshold=form.rating_threshold,
        )
    except DataError as exc:
        # Messages name our stored file; show the client's name instead.
        raise InvalidInput(str(exc).replace(data.name, filename), code="invalid_data") from None
    n = len(inter)
    with sessions() as session:
        row = repo.create_dataset(
            session, id=dataset_id, name=form.name or Path(filename).name.split(".")[0] or dataset_id,
            original_filename=filename, path=str(data.relative_to(settings.artifact_dir)), format=fmt,
            sep=form.sep, user_col=form.user_col, item_col=form.item_col, rating_col=form.rating_col,
            timestamp_col=form.timestamp_col, rating_threshold=form.rating_threshold,
            n_users=inter.n_users, n_items=inter.n_items, n_interactions=n,
            density=n / float(inter.n_users * inter.n_items), size_bytes=size,
        )
        public = DatasetPublic.model_validate(row)
        session.commit()
    return public


@router.post(
    "", status_code=201, response_model=DatasetPublic, dependencies=[WriteAuth],
    summary="Upload an interaction file (multipart, streamed to disk)",
    openapi_extra={"requestBody": {"required": True,
                                   "content": {"multipart/form-data": {"schema": _FORM_SCHEMA}}}},
)
async def create_dataset(request: Request, settings: SettingsDep) -> DatasetPublic:
    dataset_id = new_id()
    folder = settings.artifact_dir / "datasets" / dataset_id
    folder.mkdir(parents=True)
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
        return await anyio.to_thread.run_sync(
            _store, request.app.state.sessions, settings, dataset_id, form, filename, data, fmt, upload.size)
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


@router.get("/{dataset_id}", response_model=DatasetPublic, dependencies=[ReadAuth])
def get_dataset(dataset_id: DatasetId, session: SessionDep) -> DatasetPublic:
    return DatasetPublic.model_validate(repo.get_dataset(session, dataset_id))


@router.delete("/{dataset_id}", status_code=204, dependencies=[WriteAuth])
def delete_dataset(dataset_id: DatasetId, session: SessionDep, settings: SettingsDep) -> None:
    row = repo.delete_dataset(session, dataset_id)  # ConflictError (409) while a job uses it
    folder = (settings.artifact_dir / row.path).parent
    session.commit()
    if folder.resolve().is_relative_to((settings.artifact_dir / "datasets").resolve()):
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("deleted dataset %s", dataset_id)

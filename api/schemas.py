"""Request and response bodies (``XCreate`` / ``XPublic`` / ``XsPublic``); torch-free hyperparameter schema."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from api.hyperparameters import Checked, Strict, check_hyperparameters
from core.names import SERVABLE_MODEL_NAMES, MethodName, ModelName

ID_PATTERN = r"^[0-9a-f]{32}$"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-()]{0,199}$")
MAX_BATCH_USERS = 10_000


def check_safe_name(value: str, field: str) -> str:
    """Refuse names that look like paths (``../x``, ``a/b``, ``C:\\x``) or carry control characters."""
    if "/" in value or "\\" in value or ".." in value or value.startswith("."):
        raise ValueError(f"{field} must be a plain name, not a path: {value!r}")
    if not _NAME_RE.match(value):
        raise ValueError(f"{field} may only contain letters, digits, spaces and _ . - ( ) (1-200 chars): {value!r}")
    return value


def check_filename(value: str) -> str:
    """A client's file name is only stored, never used as a path; still, refuse path-like ones."""
    if not value or len(value) > 255:
        raise ValueError("filename must be 1-255 characters")
    if "/" in value or "\\" in value or ".." in value or value.startswith("."):
        raise ValueError(f"filename must be a plain file name, not a path: {value!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"filename contains control characters: {value!r}")
    return value


# ----------------------------------------------------------------------------------------------- datasets
class DatasetCreate(Checked):
    """Form fields of ``POST /datasets`` (beside the ``file`` part)."""

    name: str | None = Field(None, description="Display name; default: the uploaded file's stem.")
    format: Literal["csv", "tsv", "parquet", "inter"] | None = Field(
        None, description="File format; default: from the file name's extension."
    )
    sep: str | None = Field(None, min_length=1, max_length=4, description="Column delimiter (csv/tsv/inter).")
    user_col: str = Field("user_id", min_length=1, max_length=200, description="Column holding user ids.")
    item_col: str = Field("item_id", min_length=1, max_length=200, description="Column holding item ids.")
    rating_col: str | None = Field(None, max_length=200, description="Optional rating column.")
    timestamp_col: str | None = Field(None, max_length=200, description="Optional timestamp column.")
    rating_threshold: float | None = Field(
        None, description="Keep only interactions with rating >= threshold (needs rating_col)."
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        return None if v is None else check_safe_name(v, "name")

    @field_validator("rating_col", "timestamp_col")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None

    @model_validator(mode="after")
    def _threshold_needs_rating(self) -> DatasetCreate:
        if self.rating_threshold is not None and not self.rating_col:
            raise ValueError("rating_threshold needs rating_col")
        return self


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    original_filename: str
    format: str
    sep: str | None = None
    user_col: str
    item_col: str
    rating_col: str | None
    timestamp_col: str | None
    rating_threshold: float | None
    n_users: int
    n_items: int
    n_interactions: int
    density: float
    size_bytes: int
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


# ----------------------------------------------------------------------------------------------- jobs
class ModelSpec(Strict):
    model: ModelName = Field(description="Architecture name.")
    dim: int = Field(gt=0, le=4096, description="Embedding dimension.")


class SplitSpec(Strict):
    mode: Literal["random", "loo"] = Field("random", description="random ratios, or leave-one-out by time.")
    # A list, not a tuple: strict validation takes a tuple only from Python, and FastAPI validates bodies so.
    ratios: list[float] = Field(default_factory=lambda: [0.8, 0.1, 0.1], min_length=3, max_length=3,
                                description="train/valid/test fractions.")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if any(r < 0 for r in v) or v[0] <= 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be non-negative, train > 0, and sum to 1 (got {list(v)})")
        return v


class JobCreate(Strict):
    dataset_id: str = Field(pattern=ID_PATTERN, description="Dataset to train on.")
    teacher: ModelSpec | None = Field(None, description="Train a new teacher; or give teacher_model_id.")
    teacher_model_id: str | None = Field(None, pattern=ID_PATTERN, description="Reuse a trained teacher.")
    student: ModelSpec = Field(description="Student architecture (dot-product: bpr or lightgcn).")
    method: MethodName = Field("dcd", description="Distillation method.")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Fit-loop keys (epochs, batch_size, lr, weight_decay, patience, eval_every), the same with a "
        "teacher_ prefix for the teacher, and the method's distiller keys (DCD: m, p, eps, period, lambda_ucd, "
        "lambda_icd, lambda_rkd, ...; RRD: m, k, l, t, lambda_rrd, ...). Unknown keys are refused by name.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    split: SplitSpec = Field(default_factory=SplitSpec)

    @field_validator("student")
    @classmethod
    def _servable(cls, v: ModelSpec) -> ModelSpec:
        if v.model not in SERVABLE_MODEL_NAMES:
            raise ValueError(f"student.model {v.model!r} is not dot-product servable; use one of {SERVABLE_MODEL_NAMES}")
        return v

    @field_validator("hyperparameters")
    @classmethod
    def _hyperparameters(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        return v if method is None else check_hyperparameters(method, v)

    @model_validator(mode="after")
    def _teacher(self) -> JobCreate:
        if (self.teacher is None) == (self.teacher_model_id is None):
            raise ValueError("give exactly one of teacher {model, dim} or teacher_model_id")
        if self.teacher is not None and self.student.dim >= self.teacher.dim:
            raise ValueError(f"student.dim ({self.student.dim}) must be below teacher.dim ({self.teacher.dim})")
        return self


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    dataset_id: str | None
    status: str
    phase: str | None
    method: str
    teacher: dict[str, Any] | None
    teacher_model_id: str | None
    student: dict[str, Any]
    hyperparameters: dict[str, Any]
    seed: int
    split: dict[str, Any]
    epoch: int
    max_epochs: int
    progress: float
    history: list[Any]
    error: str | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    student_model_id: str | None
    result_teacher_model_id: str | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


# ----------------------------------------------------------------------------------------------- models
class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    job_id: str | None
    dataset_id: str | None
    role: str
    model_name: str
    dim: int
    method: str | None
    n_params: int
    size_bytes: int
    metrics: dict[str, Any]
    teacher_metrics: dict[str, Any] | None
    teacher_model_id: str | None
    compression_ratio: float | None
    created_at: datetime
    active: bool = False


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class ActivationPublic(BaseModel):
    activation_id: int
    model_id: str
    previous_model_id: str | None
    activated_at: datetime
    n_items: int


# ----------------------------------------------------------------------------------------------- serving
class ScoredItem(BaseModel):
    item: str
    score: float


class RecommendationPublic(BaseModel):
    user: str
    model_id: str
    source: Literal["personalized", "popular"]
    fallback: bool = Field(description="True when the user is unknown and popular items were returned.")
    k: int
    offset: int
    items: list[ScoredItem]


class RecommendBatchCreate(Strict):
    users: list[str] = Field(min_length=1, max_length=MAX_BATCH_USERS)
    k: int = Field(10, gt=0)
    offset: int = Field(0, ge=0)
    exclude_seen: bool = True
    exclude: list[str] = Field(default_factory=list, max_length=10_000)
    fallback: bool = True


class RecommendationsPublic(BaseModel):
    model_id: str
    data: list[RecommendationPublic]


class SimilarPublic(BaseModel):
    item: str
    model_id: str
    k: int
    items: list[ScoredItem]

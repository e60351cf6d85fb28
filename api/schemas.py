"""Request and response bodies (``XCreate`` / ``XPublic`` / ``XsPublic``); the configs they carry are ``core.config``'s."""

from __future__ import annotations

import re
import unicodedata
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

from core.config import (
    SERVABLE_MODEL_NAMES,
    Checked,
    JobSpec,
    MethodName,
    ModelName,
    ModelSpec,
    SplitSpec,
    Strict,
    check_hyperparameters,
)

ID_PATTERN = r"^[0-9a-f]{32}$"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-()]{0,199}$")
MAX_BATCH_USERS = 10_000


def _looks_like_path(value: str) -> bool:
    """``../x``, ``a/b``, ``C:\\x``, ``.hidden``: stricter than ``core.storage.safe_name`` (which allows ``a..b``),
    since these names are shown to people and echoed back, never used as paths."""
    return "/" in value or "\\" in value or ".." in value or value.startswith(".")


def check_safe_name(value: str, field: str) -> str:
    """Refuse names that look like paths (``../x``, ``a/b``, ``C:\\x``) or carry control characters."""
    if _looks_like_path(value):
        raise ValueError(f"{field} must be a plain name, not a path: {value!r}")
    if not _NAME_RE.match(value):
        raise ValueError(f"{field} may only contain letters, digits, spaces and _ . - ( ) (1-200 chars): {value!r}")
    return value


def check_filename(value: str) -> str:
    """A client's file name is only stored, never used as a path; still, refuse path-like ones."""
    if not value or len(value) > 255:
        raise ValueError("filename must be 1-255 characters")
    if _looks_like_path(value):
        raise ValueError(f"filename must be a plain file name, not a path: {value!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"filename contains control characters: {value!r}")
    # Bidi overrides (U+202E) and other format characters make a name display as something else; U+FFFD
    # is what bytes that were not UTF-8 decoded to.
    if any(c == "\ufffd" or unicodedata.category(c) in ("Cf", "Cs", "Co") for c in value):
        raise ValueError(f"filename contains invisible, private-use or invalid (U+FFFD) characters: {value!r}")
    return value


#: Column delimiters a data set may declare: one printable ASCII character that is not a letter, digit or
#: quote, or a tab ("\\t" as two characters is read as a tab, as a shell user would type it). Longer ones
#: would make pandas switch to its regex engine.
SEPARATORS = frozenset(c for c in map(chr, range(32, 127)) if not c.isalnum() and c not in "\"'") | {"\t"}


def check_sep(value: str) -> str:
    """A delimiter from :data:`SEPARATORS` (``"\\t"`` normalised to a tab)."""
    value = "\t" if value == "\\t" else value
    if value not in SEPARATORS:
        raise ValueError(
            f"must be one printable ASCII character that is not a letter, digit or quote, or a tab; got {value!r}"
        )
    return value


# ----------------------------------------------------------------------------------------------- errors
class ErrorItem(BaseModel):
    field: str = Field(description="Dotted path of the bad field (body for the body as a whole).")
    message: str
    type: str | None = Field(None, description="Pydantic's error type, e.g. missing, int_type, finite_number.")


class ErrorPublic(BaseModel):
    """Every error answer (api.errors): a sentence naming the field, a stable code, and for validation
    errors the structured list. Some carry more keys (``job`` on a 503 of POST /jobs, the readiness checks
    on a 503 of /readyz)."""

    detail: str = Field(description="What is wrong, naming the field.")
    code: str = Field(description="Stable machine-readable code, e.g. validation_error, not_found, missing_api_key.")
    errors: list[ErrorItem] | None = Field(None, description="Validation errors only: one entry per bad field.")


# ----------------------------------------------------------------------------------------------- datasets
class DatasetCreate(Checked):
    """Form fields of ``POST /datasets`` (beside the ``file`` part)."""

    name: str | None = Field(None, description="Display name (no '..'); default: the uploaded file's stem.",
                             json_schema_extra={"pattern": _NAME_RE.pattern})
    format: Literal["csv", "tsv", "parquet", "inter"] | None = Field(
        None, description="File format; default: from the file name's extension."
    )
    sep: str | None = Field(
        None, min_length=1, max_length=2,
        description="Column delimiter (csv/tsv/inter): one printable ASCII character other than a letter, digit "
        "or quote, or a tab (also written \\t).",
    )
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

    @field_validator("sep")
    @classmethod
    def _sep(cls, v: str | None) -> str | None:
        return None if v is None else check_sep(v)

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
class StudentSpec(ModelSpec):
    model: ModelName = Field(description="Architecture name; a student must be dot-product servable.",
                             json_schema_extra={"enum": list(SERVABLE_MODEL_NAMES)})
    dim: int = Field(gt=0, le=4096, description="Embedding dimension.")  # type: ignore[assignment]


class JobCreate(Strict):
    # "Exactly one of teacher / teacher_model_id", as JSON Schema (the model validator enforces it).
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["teacher"], "properties": {"teacher": {"type": "object"}}},
        {"required": ["teacher_model_id"], "properties": {"teacher_model_id": {"type": "string"}}},
    ]})

    dataset_id: str = Field(pattern=ID_PATTERN, description="Dataset to train on.")
    teacher: ModelSpec | None = Field(None, description="Train a new teacher; or give teacher_model_id.")
    teacher_model_id: str | None = Field(None, pattern=ID_PATTERN, description="Reuse a trained teacher.")
    student: StudentSpec = Field(description="Student architecture (dot-product servable: "
                                             f"{', '.join(SERVABLE_MODEL_NAMES)}); its dim below the teacher's.")
    method: MethodName = Field("dcd", description="Distillation method.")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Fit-loop keys (epochs, batch_size, lr, weight_decay, patience, min_epochs, eval_every, "
        "valid_users, sparse_updates), the same with a "
        "teacher_ prefix for the teacher (a LightGCN model trains at batch_size 32768 and lr 0.01 unless given), and the method's distiller keys (DCD: m, p, eps, period, lambda_ucd, "
        "lambda_icd, lambda_rkd, ...; RRD: m, k, l, t, lambda_rrd, ...; HetComp: teachers, ensemble_epochs, stages, k, "
        "lambda_easy, lambda_hard, ...). Unknown keys are refused by name.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    split: SplitSpec = Field(default_factory=SplitSpec)

    @field_validator("student")
    @classmethod
    def _servable(cls, v: StudentSpec) -> StudentSpec:
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
        if self.teacher is not None and not self.teacher.is_wider_than(self.student.dim or 0):
            raise ValueError(f"student.dim ({self.student.dim}) must be below teacher.dim ({self.teacher.dim})")
        # The worker builds the same spec from the stored row: a job it could not run is refused here (its
        # hyperparameters are checked again, laxly: the field validator above already held them to JSON types).
        self.spec()
        return self

    def spec(self) -> JobSpec:
        """The spec a worker will build from the stored row (a ValueError names a bad field)."""
        return JobSpec.build(dataset_id=self.dataset_id, method=self.method, teacher=self.teacher,
                             teacher_model_id=self.teacher_model_id, student=self.student,
                             hyperparameters=self.hyperparameters, seed=self.seed, split=self.split)


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
    crashes: int = Field(description="Runs that ended with their worker gone; at RECDISTILL_JOB_MAX_CRASHES the job fails")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    student_model_id: str | None
    result_teacher_model_id: str | None
    report: ModelReportPublic | None = Field(
        None, description="The student's compression report (as GET /models/{id}/report) once the job "
        "succeeded; in GET /jobs/{id} only (null in lists and cancel answers).")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


# ----------------------------------------------------------------------------------------------- models
class IndexPublic(BaseModel):
    """The FAISS index saved in a student's serving bundle, built by its worker."""

    kind: str = Field(description="flat (exact inner product), ivf (IVF-flat) or hnsw (both approximate).")
    params: dict[str, int] = Field(description="ivf: nlist, nprobe; hnsw: m, ef_search; flat: none.")
    recall_at_10: float | None = Field(description="Approximate kinds: mean recall@10 against exact search on "
                                       "recall_queries of the model's own users at these params; null for flat.")
    recall_queries: int = Field(description="Users the recall was measured on (0 for flat).")
    build_s: float = Field(description="Seconds the worker took to build and tune the index.")
    built_on: str = Field("cpu", description="gpu when faiss-gpu built the IVF lists, else cpu (all cores).")


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
    index: IndexPublic | None = Field(None, description="GET /models/{id} only, for a student: the index its "
                                      "serving bundle holds; null elsewhere and for bundles built before it was "
                                      "recorded (version 1: the index is built when loaded).")


class LatencyPublic(BaseModel):
    """Single-user top-k latency measured by the job's worker at its end (random users, warm)."""

    p50_ms: float = Field(description="Median milliseconds per recommend call.")
    p99_ms: float = Field(description="99th-percentile milliseconds per recommend call.")
    queries: int = Field(description="Timed calls (RECDISTILL_REPORT_LATENCY_QUERIES).")
    k: int = Field(description="Items asked per call.")
    method: str = Field(description="What was timed: faiss-flat / faiss-ivf / faiss-hnsw (ServingBundle.recommend, as "
                        "served) or full-scores (a model no index can serve: all scores + top-k).")
    servable: bool = Field(description="Whether the model can be served by the FAISS index.")
    index: IndexPublic | None = Field(None, description="The index timed (the student's is the one saved in its "
                                      "bundle); null for full-scores and for jobs before it was recorded.")


class ReportSidePublic(BaseModel):
    """One model of a report; fields are null where not known (never estimated)."""

    model_id: str | None
    model_name: str | None
    dim: int | None
    n_params: int | None = Field(description="Trainable parameters.")
    size_bytes: int | None = Field(description="Bytes of the weight file (safetensors) on disk.")
    metrics: dict[str, float] = Field(description="Test metrics on the job's split (ndcg/recall @10, @20).")
    latency: LatencyPublic | None = Field(description="Null when the job did not measure it.")


class ModelReportPublic(BaseModel):
    """A student's compression report: beside its teacher on the same split, and the gap it closed."""

    model_id: str
    job_id: str | None
    dataset_id: str | None
    method: str | None
    metric: str = Field(description="The metric of teacher_share and gap_closed.")
    student: ReportSidePublic
    teacher: ReportSidePublic
    times_smaller: float | None = Field(description="Teacher parameters / student parameters.")
    bytes_ratio: float | None = Field(description="Teacher weight bytes / student weight bytes.")
    teacher_share: float | None = Field(description="Student metric / teacher metric.")
    baseline_model_id: str | None = Field(
        description="The student-alone run (method none; same data set, split, seed and student) gap_closed "
        "is measured from; null when there is none.")
    baseline_metric: float | None
    gap_closed: float | None = Field(
        description="(student - student alone) / (teacher - student alone) on `metric`; null when no "
        "student-alone run is known or the teacher is not better than it (see notes).")
    notes: list[str] = Field(description="What is unknown or unusual, in words.")


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
    user: str | None = Field(description="The user asked for; null for POST /recommend (a user given by items).")
    model_id: str
    source: Literal["personalized", "popular", "folded_in"] = Field(
        description="personalized: a known user's vector; folded_in: a vector solved from the given items "
        "(POST /recommend); popular: the fallback.")
    fallback: bool = Field(description="True when the user (or every given item) is unknown and popular items "
                           "were returned.")
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


class RecommendItemsCreate(Strict):
    """A user the model has never seen, given by the items they interacted with (most recent or all)."""

    items: list[str] = Field(min_length=1, description="Item ids of the user's interactions (unknown ids are "
                             "ignored); at most RECDISTILL_MAX_FOLDIN_ITEMS. They are never recommended back.")
    k: int = Field(10, gt=0)
    offset: int = Field(0, ge=0)
    exclude: list[str] = Field(default_factory=list, description="More item ids to leave out "
                               "(at most RECDISTILL_MAX_EXCLUDE).")
    fallback: bool = Field(True, description="No given item known: popular items (true) or 404 (false).")


class RecommendationsPublic(BaseModel):
    model_id: str
    data: list[RecommendationPublic]


class SeenItemsPublic(BaseModel):
    user: str
    model_id: str
    count: int = Field(description="How many items the user has in the active model's training data.")
    items: list[str] = Field(description="The first `limit` of them, in catalogue order.")


class SimilarPublic(BaseModel):
    item: str
    model_id: str
    k: int
    items: list[ScoredItem]

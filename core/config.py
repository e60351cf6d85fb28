"""The one schema, torch-free: fit-loop and distiller configs, model and job specs, registry names and enums.

The API validates requests with these models, the worker reads job rows into a ``JobSpec``, the CLI builds
them from its arguments; the ML code takes them as they are (validated once, at the edge).
"""

from __future__ import annotations

import types
from enum import StrEnum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

# ----------------------------------------------------------------------------------------------- names
MODEL_NAMES: tuple[str, ...] = ("bpr", "neumf", "lightgcn", "ease")
# Solved in closed form, sized by the catalogue (no dim): the number in their spec is the L2 weight.
CLOSED_FORM_MODEL_NAMES: tuple[str, ...] = ("ease",)
EASE_DEFAULT_L2 = 1000.0  # the calibration's best on ML-1M validation (docs/results.md)
# The item-item matrix is n_items² floats (and its float64 inverse twice that while it is computed): 20,000
# items need 1.6 GB for B and 6.4 GB at the peak. Above this, EASE is refused with a message saying so.
EASE_MAX_ITEMS = 20_000


def check_ease_items(n_items: int, field: str = "n_items") -> None:
    """EASE's catalogue limit (a ValueError naming ``field`` above it)."""
    if n_items > EASE_MAX_ITEMS:
        raise ValueError(
            f"{field}: EASE keeps an n_items x n_items matrix; {n_items} items is above its limit of "
            f"{EASE_MAX_ITEMS} (use a bpr or lightgcn teacher for a catalogue this large)")
def list_lengths(m: int, n_users: int, n_items: int) -> tuple[int, int]:
    """(the user side's, the item side's) length of a teacher list asked to be ``m`` long: clipped to
    n_items - 1 and n_users - 1 (one column left out keeps a candidate outside the list for RRD's uninteresting
    items), 0 for a side with nothing to list."""
    return max(0, min(m, n_items - 1)), max(0, min(m, n_users - 1))


# Students are served through a FAISS inner-product index, so they must score by a dot product.
SERVABLE_MODEL_NAMES: tuple[str, ...] = ("bpr", "lightgcn")
# Every gradient of their training loss comes from embedding lookups, so ``sparse_updates`` can train them.
SPARSE_UPDATE_MODEL_NAMES: tuple[str, ...] = ("bpr",)
METHOD_NAMES: tuple[str, ...] = ("none", "rrd", "dcd", "hetcomp")

ModelName = Literal["bpr", "neumf", "lightgcn", "ease"]
MethodName = Literal["none", "rrd", "dcd", "hetcomp"]


class JobStatus(StrEnum):
    """A job row's ``status`` (the strings stored in the database and shown by the API)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobPhase(StrEnum):
    """A running job's ``phase``, in execution order."""

    TEACHER = "teacher"
    DISTILL = "distill"
    EVALUATE = "evaluate"
    INDEX = "index"


class ModelRole(StrEnum):
    """A model row's ``role``."""

    TEACHER = "teacher"
    STUDENT = "student"


# The enums as plain-string Literals, for FastAPI query parameters: the OpenAPI schema keeps an inline enum of
# strings (an Enum class would become a named component).
JobStatusName = Literal[tuple(s.value for s in JobStatus)]  # type: ignore[valid-type]
ModelRoleName = Literal[tuple(r.value for r in ModelRole)]  # type: ignore[valid-type]


# ----------------------------------------------------------------------------------------------- bases
def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        try:
            return "\x00" in "".join(value)  # a list of strings (10,000 batch users) in one C pass
        except TypeError:  # not all strings
            return any(_has_nul(v) for v in value)
    return False  # numbers, bools, None; nested models check their own fields


class Checked(BaseModel):
    """Base of every schema: unknown keys are refused by name, floats must be finite (NaN and ±Infinity,
    which Python's JSON reader accepts, would reach the loss or the database) and no string, at any depth,
    may hold a NUL character (PostgreSQL text refuses it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _has_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


def _wants_int(annotation: Any) -> bool:
    """``int`` or an optional ``int`` (not ``bool``, not a union with ``float``)."""
    if annotation is int:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        members = get_args(annotation)
        return int in members and float not in members
    return False


class Config(Checked):
    """Base of the configs: also validated strictly from JSON (``model_validate(..., strict=True)``), where a
    whole float such as ``450.0`` still counts as an integer (JSON Schema's "integer")."""

    @field_validator("*", mode="before")
    @classmethod
    def _integral_number(cls, value: Any, info: ValidationInfo) -> Any:
        # strict mode alone would refuse 450.0 for an int field
        if (isinstance(value, float) and value.is_integer() and info.field_name is not None
                and _wants_int(cls.model_fields[info.field_name].annotation)):
            return int(value)
        return value


class Strict(Config):
    """A JSON body: types are strict as well (``0`` is not a boolean, ``false`` not an integer). Form and
    query fields, which arrive as text, use ``Checked``."""

    model_config = ConfigDict(strict=True)


# ----------------------------------------------------------------------------------------------- fit loop
class TrainConfig(Config):
    """Optimisation and stopping settings of one ``fit`` run."""

    epochs: int = Field(300, ge=1, description="maximum number of epochs: a cap, which patience should beat "
                        "(at lr 1e-3 an ML-1M student distilled with RRD ran 101 epochs; the old cap of 100 cut it)")
    batch_size: int = Field(1024, ge=1, description="training pairs per mini-batch")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(
        0.0, ge=0, description="Adam (coupled L2) weight decay on all parameters"
    )
    patience: int = Field(
        20, ge=0, description="evaluations without improvement before stopping; 0 = never stop"
    )
    min_epochs: int = Field(
        0, ge=0, description="early stopping may end a run only from this epoch on: a small model can sit on a "
        "popularity plateau for tens of epochs before it personalises, and patience alone would stop it there")
    eval_every: int = Field(1, ge=1, description="validate every this many epochs (and after the last)")
    valid_users: int | None = Field(
        None, ge=1, description="validate (for early stopping) on a fixed, seeded random sample of this many of the "
        "users with validation items; None: all of them. A full-ranking pass scores users x items: at 1M users x "
        "100k items it took 8-18 minutes on one busy core (bench/results/scale-train.json, valid-sample.json), "
        "once per evaluated epoch")
    eval_ks: tuple[int, ...] = Field((10, 20), description="cut-offs computed on the validation split")
    monitor: str = Field("ndcg@10", description="validation metric that selects the best epoch")
    seed: int = Field(0, ge=0, description="seed of torch, numpy, python, negatives and shuffling")
    device: str = Field("auto", description='"auto" (CUDA when available), "cpu", "cuda" or "cuda:N"')
    cancel_check_batches: int = Field(50, ge=1, description="also poll should_cancel every this many batches")
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads during fit (None = leave torch's setting); 1 is fastest on a busy CPU"
    )
    sparse_updates: bool = Field(
        False, description="update only the embedding rows a batch looks up (sparse gradients, lazy Adam): dense "
        "Adam steps every row of every table each batch, so its epoch grows with interactions x (users + items) "
        "- quadratically with the data (bench/results/teacher-epoch-scale.json). Rows a batch misses keep their "
        "moments, so results differ from dense Adam. Plain training of lookup models only (bpr: teachers and "
        "method none); weight_decay must be 0 (the model's own reg still applies)")

    @model_validator(mode="after")
    def _sparse_without_decay(self) -> TrainConfig:
        if self.sparse_updates and self.weight_decay > 0:
            raise ValueError("weight_decay must be 0 with sparse_updates (lazy Adam has no weight decay; "
                             "use the model's reg)")
        return self

    @field_validator("monitor")
    @classmethod
    def _monitor_known(cls, v: str) -> str:
        name, _, k = v.partition("@")
        if name not in ("recall", "ndcg", "hit", "mrr", "precision") or not k.isdigit():
            raise ValueError(f"monitor must look like 'ndcg@10', got {v!r}")
        return v


#: The fit-loop keys a job's hyperparameters may set; ``teacher_<key>`` overrides the teacher's loop.
TRAIN_KEYS: tuple[str, ...] = (
    "epochs", "batch_size", "lr", "weight_decay", "patience", "min_epochs", "eval_every", "valid_users",
    "sparse_updates",
)
TEACHER_PREFIX = "teacher_"
#: Upper bounds of a job's fit-loop keys: a client's number must not hold a worker for years (the fit loop
#: itself takes any value, e.g. a diverging lr in the tests).
JOB_TRAIN_MAX: dict[str, float] = {
    "epochs": 100_000, "batch_size": 10_000_000, "lr": 10, "weight_decay": 10, "patience": 100_000,
    "min_epochs": 100_000, "eval_every": 100_000, "valid_users": 100_000_000,
}
# TrainConfig's job keys, each with its own type and bounds plus the job's upper bound (numbers only).
_JobTrain: type[Config] = create_model(  # type: ignore[call-overload]
    "JobTrain",
    __base__=Config,
    **{
        key: (Annotated[TrainConfig.model_fields[key].annotation, TrainConfig.model_fields[key],
                        *([Field(le=JOB_TRAIN_MAX[key])] if key in JOB_TRAIN_MAX else [])], None)
        for key in TRAIN_KEYS
    },
)


# ----------------------------------------------------------------------------------------------- distillers
class DistillConfig(Config):
    """Common options; subclasses add their own. Unknown keys are rejected."""

    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the distiller's own random generator (samples, Gumbel noise).")
    row_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description=(
            "Fraction of a batch's unique users (and unique positive items) that get the distillation terms; "
            "the weights are divided by it, so the expected gradient is unchanged. 1.0 = every row, as the "
            "authors' code; lower values trade gradient variance for speed (each user appears in ~100 "
            "batches per epoch on ML-1M)."
        ),
    )


class DCDConfig(DistillConfig):
    """DCD's options. The method's hyper-parameters (m, p, eps, period, lambdas, RKD's K/L/T) are the spec's.
    How the per-batch terms are computed defaults to the fast setting (``row_fraction`` 1/16, ``bank`` 8 drawn
    once per refresh period, ``group`` 8: the same expected gradient, ~3x a student epoch on CPU instead of
    ~36x); the released code's exact procedure is ``row_fraction=1, bank=0, group=1``."""

    row_fraction: float = Field(
        0.0625,
        gt=0,
        le=1,
        description="Fraction of a batch's unique users (and unique positive items) that get the distillation "
        "terms; weights are divided by it (same expected gradient). 1.0: every row, as the released code.",
    )
    m: int = Field(500, gt=0, le=100_000, description="Teacher list length M, both sides (clipped to n_items-1 / n_users-1).")
    p: int = Field(40, gt=0, le=10_000, description="Entries drawn per side per set (under- and over-estimated).")
    correction_m: int | None = Field(
        None, le=100_000,
        gt=0,
        description="UCD/ICD correct only the first correction_m entries of each teacher list (ranks, weights "
        "and samples within that prefix); RKD keeps the full M. None: the full list, as the spec.",
    )
    eps: float = Field(0.1, gt=0, le=1e6, description="Sharpness ε of tanh(relu(±ε·d)); saturates near |d| ≈ 20-30.")
    period: int = Field(
        3, gt=0, le=100_000, description="Epochs between rank/weight refreshes (refresh at epoch % period == 0)."
    )
    floor: float = Field(
        1e-5, gt=0, le=1e6, description="Added to every weight so rows with < p positive weights can sample."
    )
    lambda_ucd: float = Field(1e-3, ge=0, le=1e6, description="Weight of the sum-reduced L_UCD.")
    lambda_icd: float = Field(5e-4, ge=0, le=1e6, description="Weight of the sum-reduced L_ICD.")
    lambda_rkd: float = Field(1e-3, ge=0, le=1e6, description="Weight of the sum-reduced L_RKD (user-side RRD).")
    use_rkd: bool = Field(True, description="Include L_RKD (the released code omits it).")
    use_ucd: bool = Field(True, description="Include the user-side correction L_UCD.")
    use_icd: bool = Field(True, description="Include the item-side correction L_ICD.")
    rkd_k: int = Field(40, gt=0, le=10_000, description="RKD interesting items per user.")
    rkd_l: int = Field(40, ge=0, le=10_000, description="RKD uninteresting items per user.")
    rkd_t: float = Field(10.0, gt=0, le=1e6, description="RKD temperature T.")
    deterministic_topk: bool = Field(
        False, description="Spec §3.7: RKD's interesting list is the teacher's top-K in order (no sampling)."
    )
    chunk: int = Field(512, gt=0, le=65_536, description="Rows per chunk for teacher lists and rank refreshes.")
    correction_order: Literal["released", "teacher"] = Field(
        "released",
        description="released: UCD/ICD rank every sampled under-estimated entry (in teacher order) above every "
        "over-estimated one, as the released code. teacher: the 2p sampled entries are ranked together in the "
        "teacher's order, so no pair is pushed against the teacher (an over-estimated entry the teacher ranks "
        "higher stays above).",
    )
    group: int = Field(
        8, le=1024,
        ge=1,
        description="Mini-batches per distillation step. 1: the terms of each batch's rows are added to that "
        "batch's loss (the released code). G > 1: the rows each batch selects are collected and their terms are "
        "computed together on every G-th batch (the same sum of row terms, taken with the parameters of that "
        "batch; the fixed per-step cost is paid once per G batches). An epoch's last group closes at its last "
        "batch (the one ending the pass over the training pairs), so no row is dropped and no group spans epochs.",
    )
    bank: int = Field(
        8, le=1024,
        ge=0,
        description="0: fresh samples per mini-batch (the released code). S > 0: S exact samples per row are "
        "drawn in bulk at each epoch start and each batch row uses one at random (same per-batch distribution, "
        "so the same expected gradient; samples repeat across batches). Much faster on CPU.",
    )
    bank_epochs: int | None = Field(
        None, le=100_000,
        ge=1,
        description="Epochs a bank is kept before it is drawn again; it is always drawn again after a rank "
        "refresh, whose weights it samples. None: one bank per refresh period; 1: a fresh bank every epoch.",
    )

    @model_validator(mode="after")
    def _list_lengths(self) -> DCDConfig:
        # Refused at submission (422) when p cannot be drawn from the list it samples; the data set's own
        # clipping (n_items-1 / n_users-1) is checked at job start.
        if self.correction_m is not None and self.correction_m > self.m:
            raise ValueError(
                f"correction_m: must be at most m ({self.m}), it is a prefix of the teacher list "
                f"(got {self.correction_m})"
            )
        length, name = (self.m, "m") if self.correction_m is None else (self.correction_m, "correction_m")
        if self.p > length:
            raise ValueError(
                f"p: must be at most {name} ({length}), the list it draws from without replacement (got {self.p})"
            )
        return self


class RRDConfig(DistillConfig):
    m: int = Field(500, gt=0, description="Teacher list length M (clipped to n_items-1 / n_users-1).")
    k: int = Field(40, gt=0, le=10_000, description="Interesting items per user, drawn ∝ exp(-rank/T) from the top-M.")
    l: int = Field(40, ge=0, le=10_000, description="Uninteresting items per user, uniform outside positives and top-M.")  # noqa: E741
    t: float = Field(10.0, gt=0, le=1e6, description="Temperature T of the rank distribution exp(-rank/T).")
    lambda_rrd: float = Field(1e-3, ge=0, le=1e6, description="Weight of the sum-reduced L_RRD (user side).")
    item_side: bool = Field(False, description="Add IR-RRD's item-side term (each item's top-M users).")
    k_item: int = Field(20, gt=0, le=10_000, description="Interesting users per item (item side).")
    l_item: int = Field(20, ge=0, le=10_000, description="Uninteresting users per item (item side).")
    lambda_item: float = Field(5e-4, ge=0, le=1e6, description="Weight of the item-side term.")
    deterministic_topk: bool = Field(
        False,
        description="Spec §3.7 no-sampling variant: the interesting list is the teacher's top-K in order.",
    )
    chunk: int = Field(512, gt=0, description="Users per chunk when computing the teacher lists.")


class HetCompConfig(DistillConfig):
    """HetComp (Kang et al., WWW 2023): distil an ensemble of heterogeneous teachers through ranking targets that
    go from easy to hard along each teacher's training trajectory (docs/hetcomp.md)."""

    row_fraction: float = Field(0.25, gt=0, le=1, description=(
        "Fraction of a batch's unique users that get the term (weighted back): each scores every item for its "
        "user, and a user sits in many batches of an epoch. 1.0 = every user, as the authors' code."))
    teachers: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=lambda: ["bpr:64", "lightgcn:64"], min_length=0, max_length=4,
        description="Teachers trained beside the job's teacher to form the ensemble, as MODEL:DIM (or ease:L2); "
                    "each one's trajectory is recorded while it trains.")
    ensemble_epochs: int = Field(100, ge=1, le=1000, description="Epoch cap of each ensemble teacher (patience 10 "
                                                                 "on validation NDCG@10 stops it first).")
    ensemble_lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate of the ensemble teachers.")
    stages: int = Field(4, ge=2, le=8, description="Checkpoints per teacher trajectory (easy to hard).")
    k: int = Field(100, ge=2, le=1000, description="Length of the ensemble's ranking target (unobserved items).")
    positives: int = Field(10, ge=1, le=1000, description="Observed items per user ranked by the ensemble.")
    temperature: float = Field(10.0, gt=0, le=1e6, description="Rank importance exp(-rank / T) in the ensemble.")
    period: int = Field(10, ge=1, le=10_000, description="Epochs between two updates of the selected stages (DKC).")
    alpha: float = Field(1.05, ge=1.0, le=100.0, description="DKC threshold: a teacher stays at its stage while the "
                                                                "student closes the distance to the next by at most this factor.")
    ndcg_k: int = Field(50, ge=1, le=1000, description="List length of the student-to-stage NDCG distance.")
    lambda_easy: float = Field(1e-2, ge=0, le=1e6, description="Weight of the overall-ranking loss (before the last stage).")
    lambda_hard: float = Field(5e-3, ge=0, le=1e6, description="Weight of the listwise loss (once every teacher is at its last stage).")
    chunk: int = Field(512, gt=0, le=65_536, description="Users per chunk when computing lists.")
    patience_from_hard: bool = Field(False, description=(
        "Count early-stopping patience only once the hard phase has begun (every teacher at its last stage); "
        "before it the run goes on, up to the epoch cap. Small students can spend longer than patience in the "
        "easy phase (docs/hetcomp.md)."))

    @field_validator("teachers")
    @classmethod
    def _teachers(cls, v: list[str]) -> list[str]:
        return [str(ModelSpec.parse(t)) for t in v]


#: Each method's distiller config (``core.distill.DISTILLERS`` holds the distillers of the same names).
DISTILL_CONFIGS: dict[str, type[DistillConfig]] = {
    "none": DistillConfig, "rrd": RRDConfig, "dcd": DCDConfig, "hetcomp": HetCompConfig}
# The distiller's seed is the job's seed, never a hyperparameter of its own.
_JOB_SET_KEYS = frozenset({"seed"})


def distill_config(method: str, options: dict[str, Any]) -> DistillConfig:
    """The method's config from ``options``; an unknown method or a bad option raises ValueError naming it
    (a rule across keys: its message, which names the keys)."""
    if method not in DISTILL_CONFIGS:
        raise ValueError(f"unknown distiller {method!r}; choose one of {sorted(DISTILL_CONFIGS)}")
    try:
        return DISTILL_CONFIGS[method](**options)
    except ValidationError as exc:
        fields = ", ".join(
            (".".join(str(p) for p in e["loc"]) + f": {e['msg']}") if e["loc"] else str(e["ctx"]["error"])
            for e in exc.errors()
        )
        raise ValueError(f"invalid {method} distiller config ({fields})") from exc


# ----------------------------------------------------------------------------------------------- hyperparameters
def _distiller_keys(method: str) -> set[str]:
    if method == "none":  # plain training distils nothing, so no distiller option means anything
        return set()
    return set(DISTILL_CONFIGS[method].model_fields) - _JOB_SET_KEYS


def _validate_part(model: type[Config], prefix: str, group: dict[str, Any], strict: bool) -> dict[str, Any]:
    """``group`` checked against ``model`` (the keys given only, normalised: 2.0 -> 2 for ints)."""
    try:
        return model.model_validate(group, strict=strict).model_dump(include=set(group))
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a rule across keys: its message names them
            raise ValueError(f"{prefix}{err['ctx']['error']}") from None
        raise ValueError(f"{prefix}{err['loc'][0]}: {err['msg']} (got {err.get('input')!r})") from None


def check_hyperparameters(method: str, hp: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """A job's flat hyperparameters checked: fit-loop keys, their ``teacher_`` variants and the method's
    distiller keys (None values dropped). ``strict``: JSON types (the API); a ValueError names the key."""
    hp = {k: v for k, v in hp.items() if v is not None}
    train = {k: hp.pop(k) for k in TRAIN_KEYS if k in hp}
    teacher = {k: hp.pop(TEACHER_PREFIX + k) for k in TRAIN_KEYS if TEACHER_PREFIX + k in hp}
    if method not in DISTILL_CONFIGS:
        raise ValueError(f"unknown distiller {method!r}; choose one of {sorted(DISTILL_CONFIGS)}")
    allowed = _distiller_keys(method)
    unknown = sorted(set(hp) - allowed)
    if unknown:
        accepted = sorted([*TRAIN_KEYS, *(TEACHER_PREFIX + k for k in TRAIN_KEYS), *allowed])
        raise ValueError(f"unknown key(s) {unknown} for method {method!r}; accepted: {accepted}")
    train = _validate_part(_JobTrain, "", train, strict)
    teacher = _validate_part(_JobTrain, TEACHER_PREFIX, teacher, strict)
    hp = _validate_part(DISTILL_CONFIGS[method], "", hp, strict)
    _check_sparse_updates(method, train, teacher)
    return {**train, **{TEACHER_PREFIX + k: v for k, v in teacher.items()}, **hp}


def _check_sparse_updates(method: str, train: dict[str, Any], teacher: dict[str, Any]) -> None:
    """TrainConfig.sparse_updates' rules, named by the job's keys (the teacher's fit loop takes the student's
    keys unless its own ``teacher_`` key is given)."""
    def key(name: str) -> str:  # the teacher loop's key as the client gave it
        return TEACHER_PREFIX + name if name in teacher else name

    # (TrainConfig refuses the same pair; this names the job's keys.)
    for loop, sparse_key, decay_key in ((train, "sparse_updates", "weight_decay"),
                                        ({**train, **teacher}, key("sparse_updates"), key("weight_decay"))):
        if loop.get("sparse_updates") and loop.get("weight_decay", 0) > 0:
            raise ValueError(f"{decay_key} must be 0 with {sparse_key} (lazy Adam has no weight decay; "
                             "use the model's reg)")
    if train.get("sparse_updates") and method != "none":
        raise ValueError(f"sparse_updates: method {method!r} adds distillation losses, whose gradients are dense; "
                         "give teacher_sparse_updates for the teacher alone")


# ----------------------------------------------------------------------------------------------- specs
# A model's own training defaults, where TrainConfig's do not suit it (a value the user gives wins). LightGCN
# propagates over the whole graph at every mini-batch, so on a CPU its epoch costs 112x a BPR-MF dim-200 epoch
# at batch 1024 and 3.7x at 32768 (bench/results/teacher-epoch-ml-1m.json); 32 times fewer steps an epoch
# take a larger step (bench/results/lightgcn-batch-ml-1m.json).
MODEL_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {"lightgcn": {"batch_size": 32768, "lr": 1e-2}}


class ModelSpec(Strict):
    model: ModelName = Field(description="Architecture name.")
    dim: int | None = Field(None, gt=0, le=4096, validate_default=True,
                            description="Embedding dimension (required; absent for ease, sized by the catalogue).")
    l2: float | None = Field(None, gt=0, le=1e7, validate_default=True, description="ease only: the L2 weight "
                             f"of its closed form (default {EASE_DEFAULT_L2:g}).")

    # Field validators (not one model rule) so that an error is located at teacher.dim / teacher.l2.
    @field_validator("dim")
    @classmethod
    def _dim(cls, v: int | None, info: ValidationInfo) -> int | None:
        model = info.data.get("model")
        if model in CLOSED_FORM_MODEL_NAMES and v is not None:
            raise ValueError(f"{model} has no dim (its size is the catalogue's); give l2 instead")
        if model is not None and model not in CLOSED_FORM_MODEL_NAMES and v is None:
            raise ValueError(f"required for {model}")
        return v

    @field_validator("l2")
    @classmethod
    def _l2(cls, v: float | None, info: ValidationInfo) -> float | None:
        model = info.data.get("model")
        if model in CLOSED_FORM_MODEL_NAMES:
            return EASE_DEFAULT_L2 if v is None else v
        if model is not None and v is not None:
            raise ValueError(f"applies to ease only, not {model} (use the model option reg)")
        return v

    @property
    def closed_form(self) -> bool:
        return self.model in CLOSED_FORM_MODEL_NAMES

    def build_args(self, n_items: int) -> tuple[int, dict[str, Any]]:
        """(dim, model options) for ``build_model``: a closed-form model is n_items wide and takes its l2."""
        if self.closed_form:
            return n_items, {"l2": self.l2}
        assert self.dim is not None
        return self.dim, {}

    def train_config(self, options: dict[str, Any], sparse_key: str = "sparse_updates", **fixed: Any) -> TrainConfig:
        """How this model trains: the user's ``options`` over the model's own defaults (MODEL_TRAIN_DEFAULTS).
        ``sparse_key`` names the option that asked for sparse updates in an error."""
        config = TrainConfig(**{**MODEL_TRAIN_DEFAULTS.get(self.model, {}), **options}, **fixed)
        if config.sparse_updates and self.model not in SPARSE_UPDATE_MODEL_NAMES:
            raise ValueError(f"{sparse_key}: model {self.model!r} does not train by embedding lookups alone; only "
                             f"{', '.join(SPARSE_UPDATE_MODEL_NAMES)} can")
        return config

    def is_wider_than(self, dim: int) -> bool:
        """A student of ``dim`` is smaller than this teacher (a closed-form teacher is catalogue-wide)."""
        return self.closed_form or (self.dim is not None and self.dim > dim)

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``"bpr:200"`` -> ModelSpec(model="bpr", dim=200); ``"ease:1000"`` -> ModelSpec(model="ease", l2=1000)
        (a command-line argument)."""
        name, sep, value = text.partition(":")
        model = name.strip().lower()
        if model not in MODEL_NAMES:  # a plain message, not pydantic's three-line one
            raise ValueError(f"unknown model {name.strip()!r} in {text!r}; choose one of {', '.join(MODEL_NAMES)}")
        if model in CLOSED_FORM_MODEL_NAMES:
            if not sep:
                return cls(model=model)  # type: ignore[arg-type]
            try:
                l2 = float(value)
            except ValueError:
                l2 = float("nan")
            if not 0 < l2 <= 1e7:
                raise ValueError(f"model spec must look like '{model}:1000' (name:L2 weight in (0, 1e7]), got {text!r}")
            return cls(model=model, l2=l2)  # type: ignore[arg-type]
        if not sep or not value.strip().isdigit() or int(value) <= 0:
            raise ValueError(f"model spec must look like 'bpr:200' (name:positive dim), got {text!r}")
        limit = cls.model_fields["dim"].metadata
        max_dim = next((m.le for m in limit if getattr(m, "le", None) is not None), None)
        if max_dim is not None and int(value) > max_dim:
            raise ValueError(f"dim {int(value)} in {text!r} is above the limit {max_dim}")
        return cls(model=model, dim=int(value))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.model}:{self.l2:g}" if self.closed_form else f"{self.model}:{self.dim}"


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


class JobSpec(BaseModel):
    """What a job runs, read once from its row (``JobSpec.from_row``) and trusted after: the teacher to train
    (or reuse), the student, and the hyperparameters split into the two fit loops and the distiller's config.

    ``hyperparameters`` keeps the flat dict as the client sent it (it goes into the student's manifest)."""

    model_config = ConfigDict(frozen=True)

    dataset_id: str | None
    method: MethodName
    teacher: ModelSpec | None
    teacher_model_id: str | None
    student: ModelSpec
    seed: int
    split: SplitSpec
    hyperparameters: dict[str, Any]
    teacher_train: TrainConfig
    student_train: TrainConfig
    distiller: DistillConfig

    @classmethod
    def build(
        cls,
        *,
        dataset_id: str | None,
        method: str,
        teacher: dict[str, Any] | ModelSpec | None,
        teacher_model_id: str | None,
        student: dict[str, Any] | ModelSpec,
        hyperparameters: dict[str, Any] | None,
        seed: int,
        split: dict[str, Any] | SplitSpec | None,
    ) -> JobSpec:
        """Validate a job's parts (a ValueError names the bad field) and split its hyperparameters."""
        if method not in METHOD_NAMES:
            raise ValueError(f"unknown distiller {method!r}; choose one of {sorted(METHOD_NAMES)}")
        hp = check_hyperparameters(method, dict(hyperparameters or {}), strict=False)
        if teacher_model_id is not None:
            # A reused teacher is not trained again: a key for its fit loop would be ignored without a word.
            given = sorted(k for k in hp if k.startswith(TEACHER_PREFIX))
            if given:
                raise ValueError(f"{given[0]}: the job reuses teacher_model_id, which is not trained again; "
                                 f"drop the {TEACHER_PREFIX}keys ({', '.join(given)})")
        student_hp = {k: hp[k] for k in TRAIN_KEYS if k in hp}
        teacher_hp = {**student_hp, **{k: hp[TEACHER_PREFIX + k] for k in TRAIN_KEYS if TEACHER_PREFIX + k in hp}}
        options = {k: v for k, v in hp.items() if k not in TRAIN_KEYS and not k.startswith(TEACHER_PREFIX)}
        teacher_spec, student_spec = _model_spec(teacher, "teacher"), _model_spec(student, "student")
        assert student_spec is not None
        return cls(
            dataset_id=dataset_id,
            method=method,  # type: ignore[arg-type]
            teacher=teacher_spec,
            teacher_model_id=teacher_model_id,
            student=student_spec,
            seed=seed,
            split=SplitSpec.model_validate(split or {}, strict=False),
            hyperparameters=hp,
            # No teacher spec: the job reuses a trained teacher, and this config is not used to train one.
            teacher_train=(teacher_spec.train_config(teacher_hp, _teacher_sparse_key(hp), seed=seed)
                           if teacher_spec is not None
                           else TrainConfig(**teacher_hp, seed=seed)),
            student_train=student_spec.train_config(student_hp, seed=seed),
            distiller=distill_config(method, {**options, "seed": seed}),
        )

    @classmethod
    def from_row(cls, job: Any) -> JobSpec:
        """The spec of a job row (``core.db.models.Job``)."""
        return cls.build(
            dataset_id=job.dataset_id,
            method=job.method,
            teacher=job.teacher,
            teacher_model_id=job.teacher_model_id,
            student=job.student,
            hyperparameters=job.hyperparameters,
            seed=job.seed,
            split=job.split,
        )


def _teacher_sparse_key(hp: dict[str, Any]) -> str:
    """The job key that turned the teacher's sparse updates on: its own, or the student's it inherits."""
    if TEACHER_PREFIX + "sparse_updates" in hp:
        return TEACHER_PREFIX + "sparse_updates"
    return "sparse_updates (the teacher inherits it; give teacher_sparse_updates false)"


def _model_spec(spec: dict[str, Any] | ModelSpec | None, role: str) -> ModelSpec | None:
    """A {model, dim} (or {model: "ease", l2}) spec names a registered model (ValueError naming the field)."""
    if spec is None or isinstance(spec, ModelSpec):
        return spec
    if spec.get("model") not in MODEL_NAMES:
        raise ValueError(f"{role}.model {spec.get('model')!r} is unknown; choose one of {sorted(MODEL_NAMES)}")
    try:
        return ModelSpec.model_validate(spec, strict=False)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{role}.{where}: {err['msg'].removeprefix('Value error, ')}") from None

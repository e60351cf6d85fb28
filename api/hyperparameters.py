"""Torch-free schema of the job hyperparameters the pipeline accepts (fit loop + each distiller's keys).

The distiller configs live in ``core.distill`` (torch); these mirrors keep the API torch-free, and
``tests/api/test_api_serving.py`` checks that they name the same keys.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.names import dcd_list_problem


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
    """Base of every request schema: unknown keys are refused by name, floats must be finite (NaN and
    ±Infinity, which Python's JSON reader accepts, would reach the loss or the database) and no string,
    at any depth, may hold a NUL character (PostgreSQL text refuses it)."""

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


class Strict(Checked):
    """A JSON body: types are strict as well (``0`` is not a boolean, ``false`` not an integer). Form and
    query fields, which arrive as text, use ``Checked``."""

    model_config = ConfigDict(strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integral_number(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON Schema's "integer" is any number without a fraction, so 450.0 is one; strict mode alone
        # would refuse it.
        if (isinstance(value, float) and value.is_integer() and info.field_name is not None
                and _wants_int(cls.model_fields[info.field_name].annotation)):
            return int(value)
        return value


class TrainParams(Strict):
    """Fit-loop keys (``core.train.TrainConfig``); ``teacher_<key>`` overrides the teacher's loop."""

    epochs: int | None = Field(None, ge=1, le=100_000, description="Maximum epochs.")
    batch_size: int | None = Field(None, ge=1, le=10_000_000, description="Training pairs per mini-batch.")
    lr: float | None = Field(None, gt=0, le=10, description="Adam learning rate.")
    weight_decay: float | None = Field(None, ge=0, le=10, description="Adam weight decay.")
    patience: int | None = Field(None, ge=0, le=100_000, description="Evaluations without improvement; 0 = never stop.")
    eval_every: int | None = Field(None, ge=1, le=100_000, description="Validate every this many epochs.")


TRAIN_KEYS = tuple(TrainParams.model_fields)
TEACHER_PREFIX = "teacher_"


class DistillParams(Strict):
    """Keys of every distiller (``core.distill.base.DistillConfig``; ``seed`` comes from the job's seed)."""

    row_fraction: float | None = Field(None, gt=0, le=1, description="Fraction of batch rows distilled.")


class DCDParams(DistillParams):
    """``core.distill.dcd.DCDConfig`` keys (torch-free mirror; a test keeps them equal)."""

    m: int | None = Field(None, gt=0, description="Teacher list length M.")
    p: int | None = Field(None, gt=0, description="Entries drawn per side per set.")
    correction_m: int | None = Field(
        None, gt=0, description="UCD/ICD correct only this prefix of each teacher list (RKD keeps M)."
    )
    eps: float | None = Field(None, gt=0, description="Sharpness of tanh(relu(±eps·d)).")
    period: int | None = Field(None, gt=0, description="Epochs between rank refreshes.")
    floor: float | None = Field(None, gt=0)
    lambda_ucd: float | None = Field(None, ge=0)
    lambda_icd: float | None = Field(None, ge=0)
    lambda_rkd: float | None = Field(None, ge=0)
    use_rkd: bool | None = None
    use_ucd: bool | None = None
    use_icd: bool | None = None
    rkd_k: int | None = Field(None, gt=0)
    rkd_l: int | None = Field(None, ge=0)
    rkd_t: float | None = Field(None, gt=0)
    deterministic_topk: bool | None = None
    chunk: int | None = Field(None, gt=0)
    bank: int | None = Field(None, ge=0)
    bank_epochs: int | None = Field(None, ge=1, description="Epochs a sample bank is kept (refilled at refreshes).")
    group: int | None = Field(None, ge=1, description="Mini-batches per distillation step.")
    correction_order: Literal["released", "teacher"] | None = Field(
        None, description="released: under-estimated above over-estimated; teacher: all in teacher order."
    )

    @model_validator(mode="after")
    def _list_lengths(self) -> DCDParams:
        problem = dcd_list_problem(self.m, self.p, self.correction_m)  # the rule DCDConfig applies
        if problem:
            raise ValueError(problem)
        return self


class RRDParams(DistillParams):
    """``core.distill.rrd.RRDConfig`` keys (torch-free mirror; a test keeps them equal)."""

    m: int | None = Field(None, gt=0, description="Teacher list length M.")
    k: int | None = Field(None, gt=0, description="Interesting items per user.")
    l: int | None = Field(None, ge=0, description="Uninteresting items per user.")  # noqa: E741
    t: float | None = Field(None, gt=0, description="Rank temperature T.")
    lambda_rrd: float | None = Field(None, ge=0)
    item_side: bool | None = None
    k_item: int | None = Field(None, gt=0)
    l_item: int | None = Field(None, ge=0)
    lambda_item: float | None = Field(None, ge=0)
    deterministic_topk: bool | None = None
    chunk: int | None = Field(None, gt=0)


class NoParams(Strict):
    """Plain training takes no distiller keys."""


DISTILLER_PARAMS: dict[str, type[Strict]] = {"dcd": DCDParams, "rrd": RRDParams, "none": NoParams}


def check_hyperparameters(method: str, hp: dict[str, Any]) -> dict[str, Any]:
    """Validate fit-loop keys, their ``teacher_`` variants and the method's distiller keys; None values dropped."""
    hp = {k: v for k, v in hp.items() if v is not None}
    train = {k: hp.pop(k) for k in TRAIN_KEYS if k in hp}
    teacher = {k: hp.pop(TEACHER_PREFIX + k) for k in TRAIN_KEYS if TEACHER_PREFIX + k in hp}
    params = DISTILLER_PARAMS[method]
    unknown = sorted(set(hp) - set(params.model_fields))
    if unknown:
        accepted = sorted([*TRAIN_KEYS, *(TEACHER_PREFIX + k for k in TRAIN_KEYS), *params.model_fields])
        raise ValueError(f"unknown key(s) {unknown} for method {method!r}; accepted: {accepted}")
    checked: list[dict[str, Any]] = []
    for prefix, group, model in (("", train, TrainParams), (TEACHER_PREFIX, teacher, TrainParams), ("", hp, params)):
        try:
            checked.append(model.model_validate(group).model_dump(exclude_unset=True))  # 2.0 -> 2 for ints
        except ValidationError as exc:
            err = exc.errors()[0]
            if not err["loc"]:  # a rule across keys: its message names them
                raise ValueError(f"{prefix}{err['ctx']['error']}") from None
            raise ValueError(f"{prefix}{err['loc'][0]}: {err['msg']} (got {err.get('input')!r})") from None
    train, teacher, hp = checked
    return {**train, **{TEACHER_PREFIX + k: v for k, v in teacher.items()}, **hp}

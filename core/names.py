"""Torch-free registry names, so the API can validate requests without importing ``core.models``.

``tests/api/test_api_serving.py`` (test_names_and_hyperparameters_match_the_torch_side) checks these match ``core.models.MODELS`` and ``core.distill.DISTILLERS``.
"""

from __future__ import annotations

from typing import Literal

MODEL_NAMES: tuple[str, ...] = ("bpr", "neumf", "lightgcn")
# Students are served through a FAISS inner-product index, so they must score by a dot product.
SERVABLE_MODEL_NAMES: tuple[str, ...] = ("bpr", "lightgcn")
METHOD_NAMES: tuple[str, ...] = ("none", "rrd", "dcd")

ModelName = Literal["bpr", "neumf", "lightgcn"]
MethodName = Literal["none", "rrd", "dcd"]

# DCD's list lengths, shared with the API's torch-free mirror so a job is refused at submission (422) when p
# cannot be drawn from the list it samples (the dataset's own clipping, n_items-1 / n_users-1, is checked at
# job start).
DCD_DEFAULT_M = 500
DCD_DEFAULT_P = 40


def dcd_list_problem(m: int | None, p: int | None, correction_m: int | None) -> str | None:
    """Why DCD's (m, p, correction_m) cannot work together (None values: the defaults), or None."""
    m = DCD_DEFAULT_M if m is None else m
    p = DCD_DEFAULT_P if p is None else p
    if correction_m is not None and correction_m > m:
        return f"correction_m: must be at most m ({m}), it is a prefix of the teacher list (got {correction_m})"
    length, name = (m, "m") if correction_m is None else (correction_m, "correction_m")
    if p > length:
        return f"p: must be at most {name} ({length}), the list it draws from without replacement (got {p})"
    return None

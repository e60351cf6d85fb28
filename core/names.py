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

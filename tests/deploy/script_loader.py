"""Load a repository script (under bench/ or scripts/) as a module, so tests can call its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_script(relative: str) -> ModuleType:
    """``relative``: the script's path from the repository root, e.g. ``"bench/capacity.py"``."""
    path = ROOT / relative
    sys.path.insert(0, str(path.parent))  # a script may import one beside it (bench/faults.py: faults_kit)
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))

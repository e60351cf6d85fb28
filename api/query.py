"""The recommend route's query string, parsed by hand: FastAPI's per-parameter machinery was a third of the
route's cost (bench/serve_throughput.py), so the parsing, its limits and its error messages live here.
"""

from __future__ import annotations

from starlette.datastructures import QueryParams

from api.errors import InvalidInput
from core.index import ServingBundle


def parse_query(query_string: bytes) -> tuple[dict[str, str], list[str]]:
    """The last value of each query parameter and every ``exclude`` value, as Starlette's ``QueryParams``
    reads them. Plain strings (no %-escape or '+', the usual request) are split directly, which costs a
    fraction of ``QueryParams``; anything else goes through it."""
    if b"%" in query_string or b"+" in query_string:
        params = QueryParams(query_string)
        return dict(params), params.getlist("exclude")
    last: dict[str, str] = {}
    exclude: list[str] = []
    for part in query_string.decode("latin-1").split("&"):
        if part:
            name, _, value = part.partition("=")
            last[name] = value
            if name == "exclude":
                exclude.append(value)
    return last, exclude


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def int_param(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name}: must be an integer, got {raw!r}", code="validation_error") from None


def bool_param(params: dict[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidInput(f"{name}: must be true or false, got {raw!r}", code="validation_error")


def parse_exclude(values: list[str], bundle: ServingBundle, limit: int) -> list[str]:
    """Split ``exclude=i1,i2`` on commas, keeping ids that contain commas ("Godfather, The (1972)") whole.

    At most ``limit`` comma-separated parts in all (422 naming ``exclude`` above it). At each piece only the
    runs that could spell a catalogue id starting there are glued back (``bundle.comma_id_widths``), so the
    work is linear in the parts (one lookup each for a comma-free catalogue), however long the list.
    """
    n_parts = sum(value.count(",") + 1 for value in values)
    if n_parts > limit:
        raise InvalidInput(f"exclude: at most {limit} item ids (RECDISTILL_MAX_EXCLUDE), got {n_parts}",
                           code="too_many_excluded")
    out: list[str] = []
    known, widths = bundle.item_index, bundle.comma_id_widths
    for value in values:
        if value in known:
            out.append(value)
            continue
        parts = value.split(",")
        i = 0
        while i < len(parts):
            for n in (*widths.get(parts[i].lstrip(), ()), 1):  # longest run of pieces naming a known item
                if i + n > len(parts):
                    continue
                candidate = ",".join(parts[i : i + n])
                if candidate in known or candidate.strip() in known:
                    out.append(candidate if candidate in known else candidate.strip())
                    i += n
                    break
            else:
                out.append(parts[i].strip())  # unknown ids are simply not in the catalogue
                i += 1
    return out

"""The one validation layer for what crosses the API boundary: strings bounded in length,
numbers finite and in range, times and recipe specs parsed strictly, and client input quoted
only as a short, sanitised prefix in error messages.

gRPC carries a status message as metadata (16 KiB at most by default): a message that echoes
a long client string is replaced by RESOURCE_EXHAUSTED on the way out, so nothing here ever
quotes more than :data:`QUOTE_CHARS` characters of what a client sent.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from cad.errors import InvalidInput

QUOTE_CHARS = 40
"""Most characters of client input quoted in an error message."""
MAX_STATUS_CHARS = 1000
"""Longest status message the server sends (the interceptor cuts longer ones)."""

# Length limits of string fields (characters); README "API in brief" points here.
MAX_ID_CHARS = 256
"""client_id, candidate_id, request_id, source_id, idempotency_key."""
MAX_NAME_CHARS = 128
"""reviewer, actor."""
MAX_RECIPE_CHARS = 64
MAX_VARIANT_CHARS = 64
MAX_REASON_CHARS = 2000
"""A pin's reason (a reviewer's note has its own setting, CAD_MAX_NOTE_CHARS)."""
MAX_TIME_CHARS = 64

# Number ranges.
MAX_COORDINATE = 1_000_000.0
"""Box coordinates and sizes, in pixels (images are far smaller: CAD_MAX_IMAGE_PIXELS)."""
MAX_WINDOW = 1e9
"""|center| and width of a VOI window, in modality units."""
MAX_QUEUE_WEIGHT = 1000.0
"""omega, lambda1 and lambda2 of an annotation-queue request."""


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """``value`` as a short, printable quotation for an error message: at most ``limit``
    characters, control and non-ASCII characters escaped, and the full length when cut."""
    shown = value[:limit].encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
    if len(value) > limit:
        return f"'{shown}'... ({len(value)} characters)"
    return f"'{shown}'"


def bounded(value: str, field: str, limit: int) -> str:
    """``value`` unchanged if it has at most ``limit`` characters; InvalidInput otherwise."""
    if len(value) > limit:
        raise InvalidInput(f"{field} has {len(value)} characters, over the limit of {limit}")
    return value


def finite(value: float, field: str, low: float, high: float) -> float:
    """``value`` if it is a finite number in [low, high]; InvalidInput otherwise."""
    if not math.isfinite(value):
        raise InvalidInput(f"{field} must be a finite number, got {value}")
    if not low <= value <= high:
        raise InvalidInput(f"{field} must be in [{low:g}, {high:g}], got {value:g}")
    return value


def box_values(x: float, y: float, width: float, height: float) -> tuple[float, ...]:
    """A box's coordinates, checked: finite, within +-MAX_COORDINATE, positive size."""
    values = (x, y, width, height)
    if not all(math.isfinite(v) for v in values):
        raise InvalidInput(f"box {values} has a non-finite coordinate")
    if width <= 0 or height <= 0:
        raise InvalidInput(f"box width and height must be positive, got {width:g} x {height:g}")
    if not all(abs(v) <= MAX_COORDINATE for v in values):
        raise InvalidInput(
            f"box ({', '.join(f'{v:g}' for v in values)}) has a coordinate beyond "
            f"+-{MAX_COORDINATE:g} pixels"
        )
    return values


def parse_time(text: str, field: str = "since") -> str:
    """An ISO 8601 time as the store writes it (UTC, microseconds); '' stays '' (no bound).

    A time without a UTC offset is taken as UTC; anything else that is not ISO 8601 is
    refused, so that a typo never silently selects nothing."""
    text = bounded(text, field, MAX_TIME_CHARS).strip()
    if not text:
        return ""
    try:
        if not text.isascii():
            raise ValueError(text)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{field} {quote(text)} is not an ISO 8601 time "
            "(for example 2026-12-01 or 2026-12-01T08:30:00+00:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")

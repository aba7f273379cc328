"""The one clock format of the registry, the store and the spool: UTC, ISO 8601."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now(timespec: str = "seconds") -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec=timespec)

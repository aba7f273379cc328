"""Domain errors. The transport maps each class to one gRPC status code (see interceptors)."""

from __future__ import annotations

INTERRUPTS = (KeyboardInterrupt, SystemExit)
"""Exceptions that stop the process rather than fail one request: never turned into a status."""


class CadError(Exception):
    """Base class of every error the domain raises on purpose."""


class InvalidInput(CadError):
    """The request is malformed; the message says what to change (INVALID_ARGUMENT)."""


class UnsupportedImage(InvalidInput):
    """The image is well formed but cannot be decoded here (missing codec, transfer syntax)."""


class LimitExceeded(CadError):
    """The request is larger than a configured limit (RESOURCE_EXHAUSTED)."""


class NotFound(CadError):
    """An id in the request names nothing the server knows (NOT_FOUND)."""


class ModelUnavailable(CadError):
    """No model is loaded yet, so nothing can be classified (UNAVAILABLE)."""


class StoreUnavailable(CadError):
    """The label store cannot be reached (a database outage or failover): UNAVAILABLE, and the
    caller may retry, with the same idempotency key for a correction."""


class Settled(CadError):
    """The candidate's label was settled by adjudication and is final (FAILED_PRECONDITION)."""


class NotDisputed(CadError):
    """Adjudication asked of a candidate its reviewers do not disagree on (FAILED_PRECONDITION):
    nothing to settle yet."""


class NotScored(CadError):
    """A queue order whose keys the trainer has not written yet (FAILED_PRECONDITION)."""


class PermissionDenied(CadError):
    """The caller may not do this: the token lacks the role the call needs, or the act is
    someone else's (another reviewer's event; settling a disagreement one took part in)
    (PERMISSION_DENIED)."""


class LeaseHeld(CadError):
    """Another process holds a lease this work needs (one trainer, one pruner at a time); the
    message names the holder (FAILED_PRECONDITION)."""


class ModelRejected(CadError):
    """A model version failed its checks (checksum, signature, warm-up) and was not loaded."""


class AlreadyExists(CadError):
    """An idempotency key was reused with a different request body (ALREADY_EXISTS)."""


class Cancelled(CadError):
    """The client cancelled the call; its work was stopped at the next check (CANCELLED)."""


class DeadlineExceeded(CadError):
    """The client's deadline passed before the work was done; it was dropped (DEADLINE_EXCEEDED)."""

"""Bearer-token authentication with roles, checked once per call by the server's interceptor.

Roles: ``infer`` (CAD clients: classify, read which model serves), ``review``
(reviewers: corrections, queue, export) and ``admin`` (pin, unpin, audit trail).

Tokens come from a JSON file (a mounted Kubernetes/compose secret)::

    {"tokens": [
        {"identity": "endoscopy-tower-3", "roles": ["infer"], "sha256": "<hex of the token>"},
        {"identity": "dr.jones", "roles": ["review"], "token": "<the token itself>"}
    ]}

``sha256`` is preferred (the file then holds no usable secret). A presented
token is hashed and compared with every entry in constant time
(:func:`hmac.compare_digest`, no early exit). Tokens are never logged; the
identity is what logs, the audit trail and label events record.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cad.errors import CadError, PermissionDenied

ROLES = ("infer", "review", "admin")

INFER, REVIEW, ADMIN = ROLES

# The role each RPC needs ("/package.Service/Method" -> role). Anything not listed needs admin.
METHOD_ROLES: dict[str, str] = {
    "/cad.v1.CadInference/Classify": INFER,
    "/cad.v1.CadInference/ClassifyStream": INFER,
    "/cad.v1.CadInference/ClassifyVolume": INFER,
    "/cad.v1.ModelAdmin/GetModel": INFER,
    "/cad.v1.ModelAdmin/ListVersions": INFER,
    "/cad.v1.ModelAdmin/GetVersion": INFER,
    "/cad.v1.ModelAdmin/PinVersion": ADMIN,
    "/cad.v1.ModelAdmin/Unpin": ADMIN,
    "/cad.v1.ModelAdmin/GetAuditTrail": ADMIN,
    "/cad.v1.CadReview/SubmitCorrection": REVIEW,
    "/cad.v1.CadReview/AddMissedFinding": REVIEW,
    "/cad.v1.CadReview/GetAnnotationQueue": REVIEW,
    "/cad.v1.CadReview/ExportLabels": REVIEW,
    "/cad.v1.CadReview/GetReviewImage": REVIEW,
    "/cad.v1.CadReview/GetReviewStats": REVIEW,
    "/cad.v1.CadReview/GetConflicts": REVIEW,
    "/cad.v1.CadReview/Adjudicate": REVIEW,
    "/cad.v1.CadReview/Retract": REVIEW,
    "/cad.v1.CadReview/ReleaseClaims": REVIEW,
}
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


log = logging.getLogger(__name__)


class Unauthenticated(CadError):
    """No token, or one the server does not know (UNAUTHENTICATED)."""


@dataclass(frozen=True)
class Identity:
    name: str
    roles: frozenset[str]


ANONYMOUS = Identity("", frozenset())
current_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "cad_identity", default=None
)
"""The authenticated caller of the RPC being handled (None when authentication is off)."""


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    identity: Identity


class TokenTable:
    """Known tokens (as SHA-256 digests) and their identities."""

    def __init__(self, entries: Sequence[_Entry]) -> None:
        self._entries = list(entries)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TokenTable:
        entries = []
        raw = data.get("tokens")
        if not isinstance(raw, list) or not raw:
            raise ValueError('token file: expected {"tokens": [...]} with at least one entry')
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise ValueError(f"token file: entry {i} is not an object")
            name, roles = item.get("identity"), item.get("roles")
            if not isinstance(name, str) or not name:
                raise ValueError(f"token file: entry {i} has no identity")
            if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
                raise ValueError(
                    f"token file: entry {i} ({name}): roles must be a list of {', '.join(ROLES)}"
                )
            if isinstance(item.get("sha256"), str):
                digest = bytes.fromhex(item["sha256"])
            elif isinstance(item.get("token"), str) and len(item["token"]) >= 16:
                digest = bytes.fromhex(token_sha256(item["token"]))
            else:  # never echo the value: it may be a secret
                raise ValueError(
                    f"token file: entry {i} ({name}) needs sha256, or a token of >= 16 characters"
                )
            if len(digest) != 32:
                raise ValueError(f"token file: entry {i} ({name}): sha256 must be 64 hex digits")
            entries.append(_Entry(digest, Identity(name, frozenset(roles))))
        return cls(entries)

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"token file {path} is not valid JSON (line {exc.lineno})") from None
        return cls.from_json(data)

    def identify(self, token: str) -> Identity | None:
        """The identity of a token, comparing against every entry in constant time."""
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for entry in self._entries:
            if hmac.compare_digest(presented, entry.digest) and found is None:
                found = entry.identity
        return found


class ReloadingTokenTable:
    """The token file, read again when it changes (size or modification time), so revoking or
    adding a token needs no restart. A file that fails to parse (half written, invalid) is
    refused with one log line and the previous table stays in force."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self._table = TokenTable.load(self.path)  # a bad file at start is a start-up error
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def identify(self, token: str) -> Identity | None:
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._table = TokenTable.load(self.path)
                        log.warning("token file %s changed: tokens reloaded", self.path)
                    except (OSError, ValueError) as exc:
                        log.error("token file %s changed but was not loaded: %s", self.path, exc)
        return self._table.identify(token)


@dataclass(frozen=True)
class AccessPolicy:
    tokens: TokenTable | ReloadingTokenTable | None
    """None: authentication off (every call allowed, identity unknown)."""
    open_health: bool = True
    open_reflection: bool = False

    def authorize(
        self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None
    ) -> Identity | None:
        """The caller's identity for ``method`` (``/package.Service/Method``).

        Raises:
            Unauthenticated: missing or unknown token. PermissionDenied: wrong role.
        """
        if self.tokens is None:
            return None
        if method.startswith(HEALTH_PREFIX) and self.open_health:
            return ANONYMOUS
        if method.startswith(REFLECTION_PREFIX) and self.open_reflection:
            return ANONYMOUS
        header = ""
        for key, value in metadata or ():
            if key.lower() == "authorization":
                header = value.decode() if isinstance(value, bytes) else value
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "missing bearer token: send the metadata 'authorization: Bearer <token>'"
            )
        identity = self.tokens.identify(token.strip())
        if identity is None:
            raise Unauthenticated("unknown or revoked token")
        needed = METHOD_ROLES.get(method, ADMIN)
        if method.startswith((HEALTH_PREFIX, REFLECTION_PREFIX)):
            return identity  # any known token may use health and reflection when they are closed
        if needed not in identity.roles:
            raise PermissionDenied(
                f"{identity.name} lacks the role {needed!r} needed for {method.rsplit('/', 1)[-1]}"
            )
        return identity

"""Signed-in reviewers: in this process's memory (one replica), or in the label store so that
any replica of the review UI behind a load balancer serves any reviewer.

A session is known by an unguessable id that lives only in the reviewer's HttpOnly cookie.
What a session needs besides (the reviewer's token, forwarded on every call to the CAD server)
is kept so that neither side alone gives it away:
- the store keeps a hash of the id, never the id, and the token sealed (AES-256-GCM from the
  ``cryptography`` package, its key derived from the id by HKDF) so that a reader of the
  database cannot call the CAD server as a reviewer;
- the browser keeps the id, never the token.
The CSRF token is derived from the id, so it needs no storage either.

Each session also remembers which frames' images it was served: a verdict is accepted only for
a candidate on a frame this session's page has drawn (see ``ReviewApp.verdict``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cad.labels.store import SqlLabelStore


@dataclass
class Session:
    token: str
    reviewer: str
    csrf: str
    started: float
    seen: float
    reviewed: int = 0
    sid: str = ""
    """The session id (the cookie's value)."""
    shown: set[str] = field(default_factory=set)
    """Memory sessions only: request ids whose image this session was served."""


def csrf_of(sid: str) -> str:
    """The session's CSRF token: derived from its id, so no replica needs to store it."""
    return hmac.new(sid.encode(), b"cad-review csrf", hashlib.sha256).hexdigest()


class Sessions(Protocol):
    """Where sign-ins live. ``clock``: seconds (tests move it)."""

    def create(self, token: str, reviewer: str) -> tuple[str, Session]: ...

    def get(self, sid: str | None) -> Session | None: ...

    def drop(self, sid: str | None) -> None: ...

    def count(self, sid: str, delta: int) -> int:
        """Add ``delta`` to the labels given in this sitting (never below 0); the new count."""
        ...

    def mark_shown(self, sid: str, request_id: str) -> None: ...

    def was_shown(self, sid: str, request_id: str) -> bool: ...


class MemorySessions:
    """Sign-ins in this process (a restart signs everyone out; run one replica)."""

    def __init__(self, idle_s: float, max_s: float, clock: Callable[[], float] = time.time):
        self.idle_s, self.max_s, self.clock = idle_s, max_s, clock
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, token: str, reviewer: str) -> tuple[str, Session]:
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        session = Session(token, reviewer, csrf_of(sid), now, now, sid=sid)
        with self._lock:
            self._expire(now)
            self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = self.clock()
        with self._lock:
            self._expire(now)
            session = self._by_id.get(sid)
            if session is not None:
                session.seen = now
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    def count(self, sid: str, delta: int) -> int:
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return 0
            session.reviewed = max(0, session.reviewed + delta)
            return session.reviewed

    def mark_shown(self, sid: str, request_id: str) -> None:
        with self._lock:
            session = self._by_id.get(sid)
            if session is not None:
                session.shown.add(request_id)

    def was_shown(self, sid: str, request_id: str) -> bool:
        with self._lock:
            session = self._by_id.get(sid)
            return session is not None and request_id in session.shown

    def _expire(self, now: float) -> None:
        for sid, s in list(self._by_id.items()):
            if now - s.seen > self.idle_s or now - s.started > self.max_s:
                del self._by_id[sid]


def _hash(sid: str) -> str:
    return hashlib.sha256(b"cad-review session id\0" + sid.encode()).hexdigest()


SEALED = "aesgcm1:"
"""The prefix of a token sealed by :func:`seal`. Rows sealed otherwise (the hand-made HMAC
keystream before it) are not opened: that session ends and the reviewer signs in again."""
_HKDF_INFO = b"cad-review sealed token v1"


def _key(sid: str) -> AESGCM:
    """The AES-256-GCM key of one session, derived from its id (HKDF-SHA256): a reader of the
    store, which keeps only the id's hash, cannot derive it."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return AESGCM(hkdf.derive(sid.encode()))


def seal(token: str, sid: str) -> str:
    """The token encrypted and authenticated (AES-256-GCM from ``cryptography``, a fresh random
    96-bit nonce) with a key derived from the session id, bound to the id's hash as associated
    data: a row copied to another session, or changed, does not open."""
    nonce = os.urandom(12)
    sealed = _key(sid).encrypt(nonce, token.encode(), _hash(sid).encode())
    return SEALED + base64.b64encode(nonce + sealed).decode()


def unseal(text: str, sid: str) -> str | None:
    """The token, or None when ``text`` was not sealed by :func:`seal` for this id (changed,
    another session's, or sealed the old way)."""
    if not text.startswith(SEALED):
        return None
    try:
        raw = base64.b64decode(text[len(SEALED) :].encode(), validate=True)
        return _key(sid).decrypt(raw[:12], raw[12:], _hash(sid).encode()).decode()
    except (ValueError, InvalidTag):
        return None


class StoreSessions:
    """Sign-ins in the label store (its repository of sign-in rows,
    :class:`cad.labels.store.sessions.ReviewSessionRows`), shared by every replica of the
    review UI. ``seen`` is written at most every ``idle_s / 20`` seconds per session, so a
    session may end up to 5% of ``idle_s`` early, never late."""

    def __init__(
        self,
        store: SqlLabelStore,
        idle_s: float,
        max_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.idle_s, self.max_s, self.clock = store, idle_s, max_s, clock
        self.rows = store.review_sessions

    def create(self, token: str, reviewer: str) -> tuple[str, Session]:
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        self.rows.create(_hash(sid), reviewer, seal(token, sid), now, self.idle_s, self.max_s)
        return sid, Session(token, reviewer, csrf_of(sid), now, now, sid=sid)

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = self.clock()
        row = self.rows.get(_hash(sid))
        if row is None:
            return None
        reviewer, sealed, started, seen, reviewed = row
        token = unseal(sealed, sid)
        if token is None or now - seen > self.idle_s or now - started > self.max_s:
            self.drop(sid)
            return None
        if now - seen >= self.idle_s / 20:
            self.rows.touch(_hash(sid), now)
        return Session(token, reviewer, csrf_of(sid), started, now, reviewed, sid=sid)

    def drop(self, sid: str | None) -> None:
        if sid:
            self.rows.drop(_hash(sid))

    def count(self, sid: str, delta: int) -> int:
        return self.rows.count(_hash(sid), delta)

    def mark_shown(self, sid: str, request_id: str) -> None:
        self.rows.mark_shown(_hash(sid), request_id, self.clock())

    def was_shown(self, sid: str, request_id: str) -> bool:
        return self.rows.was_shown(_hash(sid), request_id)

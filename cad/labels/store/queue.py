"""The annotation queue in SQL: ranked off an index per variant with a LIMIT, random order off a
random-key index, claims per reviewer, re-scored predictions; and the labeled export."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from cad.aift.baselines import KEYED, MARGIN
from cad.aift.scoring import (
    PAPER_ALPHA,
    Variant,
)
from cad.labels.store.connections import POSTGRES, SQLITE
from cad.labels.store.core import Repository
from cad.labels.store.records import (
    ImageRecord,
    LabeledCandidate,
    QueueEntry,
)
from cad.labels.store.rows import (
    CANDIDATE_COLUMNS,
    CANDIDATE_WIDTH,
    IMAGE_COLUMNS,
    IMAGE_WIDTH,
    QUEUE_ENTRY_COLUMNS,
    candidate_record,
    queue_entry,
    random_key,
)

log = logging.getLogger(__name__)


class QueueQueries(Repository):
    """The annotation queue and its claims, the pool's re-scoring and the labeled export
    (``store.queue``)."""

    # ------------------------------------------------------------------ queue, export, metrics

    def unlabeled(self, audit_slice: bool = True) -> list[QueueEntry]:
        """Every classified candidate without a label, with its patch predictions (without the
        audit slice's when ``audit_slice`` is false: what a ranking may choose from)."""
        rows = self._query(
            f"SELECT {QUEUE_ENTRY_COLUMNS} "
            "FROM candidates c JOIN images i ON i.request_id = c.request_id "
            "WHERE c.label IS NULL AND c.origin = 'model' AND c.patch_probs IS NOT NULL "
            + ("" if audit_slice else "AND c.audit_slice = 0 ")
            + "ORDER BY c.created, c.candidate_id"
        )
        return [queue_entry(r) for r in rows]

    def _unclaimed(self, cur: Any, reviewer: str | None) -> tuple[str, tuple[Any, ...]]:
        """The condition (and its parameters) that leaves out the candidates another reviewer's
        live claim holds from ``reviewer`` (None: no condition)."""
        if reviewer is None:
            return "", ()
        return (
            "AND (c.claimed_until IS NULL OR c.claimed_until < ? OR c.claimed_by = ?) ",
            (self._now(cur), reviewer),
        )

    def claim(
        self, candidate_ids: Sequence[str], reviewer: str, seconds: float, limit: int
    ) -> list[str]:
        """Claim for ``reviewer``, in the given order, the first ``limit`` of these candidates
        that are unlabeled and not claimed by another reviewer (or whose claim has ended), so
        that two reviewers asking at once never get the same item. PostgreSQL: one statement
        that locks the rows it takes and skips rows another transaction holds (``FOR UPDATE
        SKIP LOCKED``: a reviewer never waits on another's claim); SQLite, whose writers are
        serialised: one conditional update per candidate. Returns the ids claimed, in order."""
        ids = list(candidate_ids)

        def body(cur: Any) -> list[str]:
            now_ = self._now(cur)
            until = (datetime.fromisoformat(now_) + timedelta(seconds=seconds)).isoformat()
            free = (
                "label IS NULL AND (claimed_until IS NULL OR claimed_until < ? OR claimed_by = ?)"
            )
            if self.dialect is POSTGRES:
                cur.execute(
                    self._sql(
                        "UPDATE candidates SET claimed_by = ?, claimed_until = ? "
                        "WHERE candidate_id IN (SELECT candidate_id FROM candidates "
                        f"WHERE candidate_id = ANY(?) AND {free} "
                        "ORDER BY array_position(?, candidate_id) LIMIT ? "
                        "FOR UPDATE SKIP LOCKED) RETURNING candidate_id"
                    ),
                    (reviewer, until, ids, now_, reviewer, ids, limit),
                )
                got = {r[0] for r in cur.fetchall()}
                return [cid for cid in ids if cid in got]
            taken: list[str] = []
            for cid in ids:
                if len(taken) >= limit:
                    break
                cur.execute(
                    self._sql(
                        "UPDATE candidates SET claimed_by = ?, claimed_until = ? "
                        f"WHERE candidate_id = ? AND {free}"
                    ),
                    (reviewer, until, cid, now_, reviewer),
                )
                if cur.rowcount == 1:
                    taken.append(cid)
            return taken

        return self._run(body)

    def release_claims(self, reviewer: str, candidate_ids: Sequence[str] = ()) -> int:
        """End ``reviewer``'s claims on these candidates (a skip), or on every candidate when
        none are given (a sign-out); another reviewer's claims are left alone. Returns how
        many ended."""
        ids = list(candidate_ids)

        def body(cur: Any) -> int:
            released = 0
            where = "claimed_by = ?" + (" AND candidate_id = ?" if ids else "")
            for cid in ids or [""]:
                cur.execute(
                    self._sql(
                        "UPDATE candidates SET claimed_by = NULL, claimed_until = NULL "
                        f"WHERE {where}"
                    ),
                    (reviewer, cid) if ids else (reviewer,),
                )
                released += int(cur.rowcount)
            return released

        return self._run(body)

    def random_unlabeled(
        self, seed: int, limit: int, unclaimed_for: str | None = None, audit_slice: bool = False
    ) -> list[tuple[QueueEntry, float]]:
        """``limit`` unlabeled candidates in a seeded random order read off an index (the
        candidates' fixed random keys from a seed's starting point, wrapping round): a random
        sample without reading the pool. Score: the key. Outside the audit slice, or (with
        ``audit_slice``) inside it only."""
        start = random_key(f"seed:{seed}")
        rows: list[tuple[Any, ...]] = []
        for where in ("c.random_key >= ?", "c.random_key < ?"):

            def body(cur: Any, where: str = where, wanted: int = limit - len(rows)) -> list[Any]:
                claims, claim_params = self._unclaimed(cur, unclaimed_for)
                cur.execute(
                    self._sql(
                        f"SELECT {QUEUE_ENTRY_COLUMNS}, "
                        "c.random_key FROM candidates c JOIN images i ON i.request_id = "
                        "c.request_id WHERE c.label IS NULL AND c.origin = 'model' AND "
                        f"c.patch_probs IS NOT NULL AND c.audit_slice = ? AND {where} {claims}"
                        "ORDER BY c.random_key, c.candidate_id LIMIT ?"
                    ),
                    (int(audit_slice), start, *claim_params, wanted),
                )
                return list(cur.fetchall())

            rows += self._run(body)
            if len(rows) >= limit:
                break
        return [(queue_entry(r), float(r[15])) for r in rows]

    def ranked_unlabeled(
        self,
        spec: Variant,
        limit: int,
        unclaimed_for: str | None = None,
        fresh: str | None = None,
    ) -> list[tuple[QueueEntry, float]]:
        """The top ``limit`` unlabeled candidates by an AIFT variant, ranked in SQL from the
        stored terms (``lambda1 * E + lambda2 * D`` over all patches, or over the
        alpha-majority ones), best first, ties by candidate id. A named variant reads its own
        index, so the cost does not grow with the pool; other weights scan the stored numbers
        (never the patch predictions).

        ``fresh``: the candidates version ``fresh`` scored first, in their order, then the
        others (scores of different versions are not comparable: an earlier version may call
        everything uncertain). Off an index on (scored_version, entropy_alpha) for the default
        ranking; a scan of the variant's index for the others.

        Raises:
            ValueError: ``spec.alpha`` is neither 1 nor the paper's (no stored terms for it).
        """
        if fresh is not None:
            first = self._ranked(spec, limit, unclaimed_for, fresh)
            if len(first) >= limit:
                return first
            taken = {e.candidate_id for e, _ in first}
            rest = self._ranked(spec, limit + len(first), unclaimed_for, None)
            return (first + [(e, r) for e, r in rest if e.candidate_id not in taken])[:limit]
        return self._ranked(spec, limit, unclaimed_for, None)

    def _ranked(
        self, spec: Variant, limit: int, unclaimed_for: str | None, scored_by: str | None
    ) -> list[tuple[QueueEntry, float]]:
        if spec.alpha == 1.0:
            e, d = "c.entropy", "c.diversity"
        elif spec.alpha == PAPER_ALPHA:
            e, d = "c.entropy_alpha", "c.diversity_alpha"
        else:
            raise ValueError(f"no stored ranking terms for alpha {spec.alpha}")
        named = {(1.0, 0.0): e, (0.0, 1.0): d, (1.0, 1.0): f"{e} + {d}"}
        expression = named.get((spec.lambda1, spec.lambda2))
        params: tuple[Any, ...] = ()
        hint = ""
        if expression is None:
            expression, params = f"? * {e} + ? * {d}", (spec.lambda1, spec.lambda2)
        elif self.dialect is SQLITE:
            # without ANALYZE statistics SQLite prefers the (label, origin) index and sorts
            # every unlabeled row; the variant's own index answers with the LIMIT alone
            index = {"c.entropy": "entropy", "c.diversity": "diversity"}.get(expression)
            index = (
                index
                or {
                    "c.entropy_alpha": "entropy_alpha",
                    "c.diversity_alpha": "diversity_alpha",
                    "c.entropy + c.diversity": "entropy_diversity",
                    "c.entropy_alpha + c.diversity_alpha": "entropy_diversity_alpha",
                }[expression]
            )
            hint = f" INDEXED BY queue_{index}"
            if scored_by is not None and index == "entropy_alpha":
                hint = " INDEXED BY queue_fresh"

        return self._top_unlabeled(
            f"({expression})", f"candidates c{hint} ", f"({expression})", params, params,
            limit, unclaimed_for, scored_by,
        )  # fmt: skip

    def keyed_unlabeled(
        self, method: str, limit: int, unclaimed_for: str | None = None
    ) -> list[tuple[QueueEntry, float]]:
        """The top ``limit`` unlabeled candidates by a literature baseline
        (:mod:`cad.aift.baselines`), best first, ties by candidate id: ``margin`` off its
        index on the stored probability (score ``1 - |2p - 1|``); the others by the keys the
        trainer wrote for them (:meth:`put_queue_keys`), candidates without one left out.

        Raises:
            ValueError: ``method`` is not a baseline.
        """
        if method == MARGIN:
            join, order, params = "", "(0.5 - ABS(c.probability - 0.5))", tuple[Any, ...]()
            score = f"2 * {order}"
        elif method in KEYED:
            join = "JOIN queue_keys k ON k.candidate_id = c.candidate_id AND k.method = ? "
            order, score, params = "k.sort_key", "k.sort_key", (method,)
        else:
            raise ValueError(f"{method!r} is not a baseline order")

        return self._top_unlabeled(
            score, f"candidates c {join}", order, params, (), limit, unclaimed_for
        )

    def _top_unlabeled(
        self,
        ranking: str,
        source: str,
        order: str,
        head_params: tuple[Any, ...],
        order_params: tuple[Any, ...],
        limit: int,
        unclaimed_for: str | None,
        scored_by: str | None = None,
    ) -> list[tuple[QueueEntry, float]]:
        """The top ``limit`` unlabeled candidates outside the audit slice by ``order`` (SQL,
        descending; ties by candidate id), from ``source`` (``candidates c`` with an index hint
        or a join), each with its ``ranking`` (SQL); ``head_params`` fill the placeholders of
        ``ranking`` and ``source``, ``order_params`` those of ``order``. Others' live claims are
        not offered to ``unclaimed_for``; ``scored_by``: only candidates that version scored."""

        def body(cur: Any) -> list[tuple[Any, ...]]:
            fresh, fresh_params = "", tuple[Any, ...]()
            if scored_by is not None:
                fresh, fresh_params = "AND c.scored_version = ? ", (scored_by,)
            claims, claim_params = self._unclaimed(cur, unclaimed_for)
            cur.execute(
                self._sql(
                    f"SELECT {QUEUE_ENTRY_COLUMNS}, {ranking} AS ranking "
                    f"FROM {source}JOIN images i ON i.request_id = c.request_id "
                    "WHERE c.label IS NULL AND c.origin = 'model' AND c.patch_probs IS NOT NULL "
                    f"AND c.audit_slice = 0 {fresh}{claims}ORDER BY {order} DESC, c.candidate_id "
                    "LIMIT ?"
                ),
                (*head_params, *fresh_params, *claim_params, *order_params, limit),
            )
            return list(cur.fetchall())

        rows = self._run(body, read=True)
        return [(queue_entry(r), float(r[15])) for r in rows]

    def on_frames(
        self, request_ids: Sequence[str], unclaimed_for: str | None = None
    ) -> list[QueueEntry]:
        """The unlabeled candidates outside the audit slice on these frames (requests), without
        those another reviewer's live claim holds from ``unclaimed_for``: frame by frame in the
        given order, then by candidate id. What a reviewer is handed with a frame the ranking
        picked (off the index on ``request_id``)."""
        frames = list(dict.fromkeys(request_ids))
        if not frames:
            return []

        def body(cur: Any) -> list[tuple[Any, ...]]:
            claims, claim_params = self._unclaimed(cur, unclaimed_for)
            marks = ", ".join("?" * len(frames))
            cur.execute(
                self._sql(
                    f"SELECT {QUEUE_ENTRY_COLUMNS} "
                    "FROM candidates c JOIN images i ON i.request_id = c.request_id "
                    f"WHERE c.request_id IN ({marks}) AND c.label IS NULL AND c.origin = 'model' "
                    f"AND c.patch_probs IS NOT NULL AND c.audit_slice = 0 {claims}"
                    "ORDER BY c.candidate_id"
                ),
                (*frames, *claim_params),
            )
            return list(cur.fetchall())

        place = {rid: k for k, rid in enumerate(frames)}
        entries = [queue_entry(r) for r in self._run(body)]
        return sorted(entries, key=lambda e: (place[e.request_id], e.candidate_id))

    def held_by_others(self, request_ids: Sequence[str], reviewer: str) -> set[str]:
        """Those of these frames on which a reviewer other than ``reviewer`` holds a live claim
        on an unlabeled candidate (a frame is handed out whole or not at all)."""
        frames = list(dict.fromkeys(request_ids))
        if not frames:
            return set()

        def body(cur: Any) -> list[tuple[Any, ...]]:
            marks = ", ".join("?" * len(frames))
            cur.execute(
                self._sql(
                    f"SELECT DISTINCT request_id FROM candidates WHERE request_id IN ({marks}) "
                    "AND label IS NULL AND claimed_until >= ? AND claimed_by <> ?"
                ),
                (*frames, self._now(cur), reviewer),
            )
            return list(cur.fetchall())

        return {r[0] for r in self._run(body)}

    def put_queue_keys(self, method: str, version: str, keys: Sequence[tuple[str, float]]) -> None:
        """Replace a keyed baseline's keys (candidate id, key; higher is asked first) with a
        re-scoring's by model ``version``, in one transaction: the queue never mixes two."""
        if method not in KEYED:
            raise ValueError(f"{method!r} keeps no keys; keyed orders: {', '.join(KEYED)}")

        def body(cur: Any) -> None:
            cur.execute(self._sql("DELETE FROM queue_keys WHERE method = ?"), (method,))
            cur.executemany(
                self._sql(
                    "INSERT INTO queue_keys (method, candidate_id, sort_key, model_version) "
                    "VALUES (?, ?, ?, ?)"
                ),
                [(method, cid, float(k), version) for cid, k in keys],
            )

        self._run(body)

    def queue_key_versions(self, method: str) -> dict[str, int]:
        """How many keys of a keyed baseline each model version wrote (empty: none yet)."""
        rows = self._query(
            "SELECT model_version, COUNT(*) FROM queue_keys WHERE method = ? GROUP BY model_version",
            (method,),
        )
        return {str(v): int(n) for v, n in rows}

    def others_claims(self, reviewer: str) -> tuple[int, str]:
        """How many unlabeled candidates reviewers other than ``reviewer`` hold live claims on,
        and when the first of those claims ends (ISO 8601; "" when none). Read off the index of
        claims (every progress refresh asks: it must not count the pool)."""

        def body(cur: Any) -> tuple[int, str]:
            cur.execute(
                self._sql(
                    f"SELECT COUNT(*), MIN(claimed_until) FROM candidates{self._hint('claims')} "
                    "WHERE label IS NULL AND claimed_until IS NOT NULL AND claimed_until >= ? "
                    "AND claimed_by <> ?"
                ),
                (self._now(cur), reviewer),
            )
            count, first = cur.fetchone()
            return int(count), str(first or "")

        return self._run(body)

    def top_scored_versions(self, spec: Variant, limit: int = 20) -> list[str]:
        """The model versions that last scored the top ``limit`` of the queue by ``spec``."""
        ids = [e.candidate_id for e, _ in self.ranked_unlabeled(spec, limit)]
        if not ids:
            return []
        rows = self._query(
            "SELECT COALESCE(scored_version, model_version) FROM candidates "
            f"WHERE candidate_id IN ({', '.join('?' * len(ids))})",
            ids,
        )
        return [str(r[0]) for r in rows]

    def count_unlabeled(self) -> int:
        rows = self._query(
            "SELECT COUNT(*) FROM candidates WHERE label IS NULL AND origin = 'model'"
        )
        return int(rows[0][0])

    def labeled(self, since: str = "") -> Iterator[LabeledCandidate]:
        """Labeled candidates with their image references, in label order."""
        rows = self._query(
            f"SELECT {', '.join('c.' + n.strip() for n in CANDIDATE_COLUMNS.split(','))}, "
            f"{', '.join('i.' + n.strip() for n in IMAGE_COLUMNS.split(','))}, "
            "c.label, c.conflict, c.label_event_id, c.labeled_at, c.events, c.adjudicated, "
            "c.audit_slice FROM candidates c JOIN images i ON i.request_id = c.request_id "
            "WHERE c.label IS NOT NULL AND c.labeled_at > ? ORDER BY c.labeled_at, c.candidate_id",
            (since,),
        )
        n = CANDIDATE_WIDTH
        m = n + IMAGE_WIDTH
        for r in rows:
            yield LabeledCandidate(
                candidate_record(r[:n]),
                ImageRecord(*r[n:m]),
                int(r[m]),
                bool(r[m + 1]),
                r[m + 2],
                r[m + 3],
                int(r[m + 4]),
                bool(r[m + 5]),
                bool(r[m + 6]),
            )

    def audit_slice_scores(self) -> dict[str, tuple[list[int], list[float]]]:
        """The audit slice's settled labels and the probability each was given, grouped by the
        model version that gave it (the last to score the candidate before its label)."""
        rows = self._query(
            "SELECT COALESCE(scored_version, model_version), label, probability FROM candidates "
            "WHERE audit_slice = 1 AND label IS NOT NULL AND probability IS NOT NULL "
            "AND (conflict = 0 OR adjudicated = 1) ORDER BY candidate_id"
        )
        out: dict[str, tuple[list[int], list[float]]] = {}
        for version, label, probability in rows:
            y, p = out.setdefault(str(version), ([], []))
            y.append(int(label))
            p.append(float(probability))
        return out

    def precision_by_version(self) -> dict[str, tuple[int, int]]:
        """Per served model version: (confirmed, dismissed) among its reviewed candidates."""
        rows = self._query(
            "SELECT model_version, SUM(CASE WHEN label = 1 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN label = 0 THEN 1 ELSE 0 END) FROM candidates "
            "WHERE origin = 'model' AND label IS NOT NULL GROUP BY model_version"
        )
        return {str(v): (int(tp), int(fp)) for v, tp, fp in rows}

"""The unlabeled pool as re-scoring reads and writes it (``store.pool``): pages by key, shards,
the newest arrivals and a uniform sample off their indexes, named rows, and the re-scored
predictions written back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cad.labels.store.core import Repository
from cad.labels.store.records import PoolRow
from cad.labels.store.rows import probs_blob, random_key, ranking_terms

POOL_SELECT = (
    "SELECT c.candidate_id, c.request_id, c.x, c.y, c.width, c.height, c.recipe, c.geometry, "
    "i.sha256, i.source_id, i.study_uid FROM candidates c JOIN images i "
    "ON i.request_id = c.request_id"
)
"""An unlabeled candidate as re-scoring reads it (:class:`PoolRow`): where it is, not what was
predicted."""


class PoolRows(Repository):
    """The pool of unlabeled candidates, as a re-scoring round reads it and writes it back."""

    def _pool_where(
        self, skip_version: str | None, shard: tuple[int, int] | None
    ) -> tuple[str, tuple[Any, ...]]:
        where = "c.label IS NULL AND c.origin = 'model' AND c.patch_probs IS NOT NULL " + (
            "AND (c.scored_version IS NULL OR c.scored_version <> ?) " if skip_version else ""
        )
        params: tuple[Any, ...] = (skip_version,) if skip_version else ()
        if shard is not None:
            index, count = shard
            if not 0 <= index < count:
                raise ValueError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
            # the candidates' fixed random keys, uniform in [0, 1), cut into ``count`` intervals:
            # every candidate falls in exactly one shard, whatever the shards' order or timing
            where += "AND c.random_key >= ? AND c.random_key < ? "
            params += (index / count, (index + 1) / count if index + 1 < count else 2.0)
        return where, params

    def pool_page(
        self,
        after: str,
        limit: int,
        skip_version: str | None = None,
        shard: tuple[int, int] | None = None,
    ) -> list[PoolRow]:
        """The next ``limit`` unlabeled candidates after candidate id ``after`` (keyset
        pagination: each page is an index range, never an OFFSET), without their patch
        predictions; those ``skip_version`` already scored left out (a re-scoring that was
        stopped goes on where it stopped); only shard ``(i, n)`` of the pool when given."""
        where, params = self._pool_where(skip_version, shard)
        rows = self._query(
            f"{POOL_SELECT} WHERE c.candidate_id > ? AND {where}ORDER BY c.candidate_id LIMIT ?",
            (after, *params, limit),
        )
        return [PoolRow(*r) for r in rows]

    def pool_count(
        self, skip_version: str | None = None, shard: tuple[int, int] | None = None
    ) -> int:
        """How many candidates :meth:`pool_page` would go through (a progress total)."""
        where, params = self._pool_where(skip_version, shard)
        return int(self._query(f"SELECT COUNT(*) FROM candidates c WHERE {where}", params)[0][0])

    def newest_unlabeled(self, limit: int, skip_version: str | None = None) -> list[str]:
        """The ids of the ``limit`` most recently recorded unlabeled candidates outside the audit
        slice, newest first, off an index (a budgeted re-scoring refreshes recent arrivals);
        those ``skip_version`` already scored left out."""
        where, params = self._pool_where(skip_version, None)
        rows = self._query(
            f"SELECT c.candidate_id FROM candidates c{self._hint('queue_recent')} WHERE {where}"
            "AND c.audit_slice = 0 ORDER BY c.created DESC, c.candidate_id DESC LIMIT ?",
            (*params, limit),
        )
        return [str(r[0]) for r in rows]

    def pool_sample(self, seed: int, limit: int, skip_version: str | None = None) -> list[str]:
        """The ids of ``limit`` unlabeled candidates outside the audit slice, a uniform random
        sample read off the random-key index from a seed's starting point, wrapping round;
        those ``skip_version`` already scored left out (a repeated sample moves on)."""
        start = random_key(f"seed:{seed}")
        where, params = self._pool_where(skip_version, None)
        ids: list[str] = []
        for part in ("c.random_key >= ?", "c.random_key < ?"):
            ids += [
                str(r[0])
                for r in self._query(
                    f"SELECT c.candidate_id FROM candidates c{self._hint('queue_random')} "
                    f"WHERE {where}AND c.audit_slice = 0 AND {part} "
                    "ORDER BY c.random_key, c.candidate_id LIMIT ?",
                    (*params, start, limit - len(ids)),
                )
            ]
            if len(ids) >= limit:
                break
        return ids

    def pool_rows(
        self,
        candidate_ids: Sequence[str],
        skip_version: str | None = None,
        shard: tuple[int, int] | None = None,
    ) -> list[PoolRow]:
        """These candidates as :meth:`pool_page` reads them, in id order; those no longer in the
        pool (labelled or forgotten since), those ``skip_version`` already scored and those
        outside ``shard`` left out."""
        ids = sorted(set(candidate_ids))
        where, params = self._pool_where(skip_version, shard)
        out: list[PoolRow] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = self._query(
                f"{POOL_SELECT} WHERE c.candidate_id IN ({marks}) AND {where}"
                "ORDER BY c.candidate_id",
                (*chunk, *params),
            )
            out += [PoolRow(*r) for r in rows]
        return out

    def update_predictions(
        self, version: str, rows: Sequence[tuple[str, np.ndarray, float, float, float, float]]
    ) -> None:
        """Store a re-scoring of unlabeled candidates by model ``version``.

        ``rows``: (candidate_id, patch_probs, probability, entropy, diversity, score). The
        candidate's ``model_version`` (the model that served it) is kept for live precision.
        """

        all_terms = ranking_terms([r[1] for r in rows], [r[3] for r in rows], [r[4] for r in rows])

        def body(cur: Any) -> None:
            for (cid, probs, probability, _, _, score), terms in zip(rows, all_terms, strict=True):
                blob, shape = probs_blob(probs)
                entropy, diversity, entropy_alpha, diversity_alpha = terms
                cur.execute(
                    self._sql(
                        "UPDATE candidates SET patch_probs = ?, patch_shape = ?, probability = ?, "
                        "entropy = ?, diversity = ?, score = ?, scored_version = ?, "
                        "entropy_alpha = ?, diversity_alpha = ? "
                        "WHERE candidate_id = ? AND label IS NULL"
                    ),
                    (
                        blob,
                        shape,
                        probability,
                        entropy,
                        diversity,
                        score,
                        version,
                        entropy_alpha,
                        diversity_alpha,
                        cid,
                    ),
                )

        self._run(body)

    def scored_versions(self) -> dict[str, int]:
        """How many unlabeled candidates each model version last scored."""
        rows = self._query(
            "SELECT scored_version, COUNT(*) FROM candidates WHERE label IS NULL AND origin = 'model' "
            "GROUP BY scored_version"
        )
        return {str(v): int(n) for v, n in rows}

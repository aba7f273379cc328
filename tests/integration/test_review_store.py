"""Label store and review domain, the same suite on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cad.aift import Box, aift_scores
from cad.aift.baselines import margin_scores
from cad.errors import (
    AlreadyExists,
    InvalidInput,
    LeaseHeld,
    NotDisputed,
    NotFound,
    NotScored,
    PermissionDenied,
    Settled,
)
from cad.labels.archive import ImageArchive, prune
from cad.labels.review import ReviewService
from cad.labels.store import CandidateRecord, ImageRecord, SqlLabelStore, open_store
from cad.metrics import ServiceMetrics


@pytest.fixture
def store(store_url: str) -> Iterator[SqlLabelStore]:
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics(CollectorRegistry())


@pytest.fixture
def review(store: SqlLabelStore, metrics: ServiceMetrics) -> ReviewService:
    metrics.bind_store(store.queue.count_unlabeled, store.queue.precision_by_version)
    return ReviewService(store, metrics, max_note_chars=100)


def add_image(
    store: SqlLabelStore,
    request_id: str,
    n: int = 3,
    seed: int = 0,
    version: str = "1",
    sha: str | None = None,
    created: str = "",
    study: str = "1.2.3",
) -> list[str]:
    rng = np.random.default_rng(seed)
    store.record_classification(
        ImageRecord(
            request_id,
            sha or f"sha-{request_id}",
            1000,
            100,
            120,
            0,
            "dicom",
            "src",
            study,
            "1.2.3.4",
            "1.2.3.4.5",
            "CT",
            "polyp",
            version,
            created,
        ),
        [
            CandidateRecord(
                f"{request_id}-{i}",
                request_id,
                f"c{i}",
                10.0 * i,
                5.0,
                20.0,
                20.0,
                "polyp",
                version,
                0.5,
                1.0,
                2.0,
                3.0,
                rng.dirichlet([1, 1], size=24).astype(np.float32),
            )
            for i in range(n)
        ],
    )
    return [f"{request_id}-{i}" for i in range(n)]


def test_migrations_are_numbered_and_idempotent(store: SqlLabelStore) -> None:
    from cad.labels.store.migrations import MIGRATIONS

    assert [m[0] for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert store.schema_version() == len(MIGRATIONS) >= 3  # 3: audit_events
    assert store.migrate() == []


def test_candidate_round_trip_keeps_patch_predictions(store: SqlLabelStore) -> None:
    add_image(store, "r1")
    c = store.get_candidate("r1-2")
    assert (c.x, c.width, c.origin, c.model_version) == (20.0, 20.0, "model", "1")
    assert c.patch_probs is not None and c.patch_probs.shape == (24, 2)
    np.testing.assert_allclose(c.patch_probs.sum(axis=1), 1.0, rtol=1e-6)


def test_corrections_are_append_only_with_conflicts(
    review: ReviewService, store: SqlLabelStore, metrics: ServiceMetrics
) -> None:
    add_image(store, "r1")
    first = review.submit_correction("r1-0", "FALSE_POSITIVE", "dr.a", "k1")
    assert (
        first.event.label_before is None
        and first.event.label_after == 0
        and not first.event.conflict
    )
    same = review.submit_correction("r1-0", "TRUE_POSITIVE", "dr.a", "k2", "changed my mind")
    assert same.event.label_before == 0 and not same.event.conflict  # same reviewer: no conflict
    other = review.submit_correction("r1-0", "FALSE_POSITIVE", "dr.b", "k3")
    assert other.event.conflict and other.event.seq == 3
    events = store.labels.events("r1-0")
    assert [(e.reviewer, e.label_before, e.label_after) for e in events] == [
        ("dr.a", None, 0),
        ("dr.a", 0, 1),
        ("dr.b", 1, 0),
    ]
    (labeled,) = list(review.export())
    assert labeled.label == 0 and labeled.conflict and labeled.events == 3
    r = metrics.registry
    assert r.get_sample_value("cad_corrections_total", {"verdict": "false_positive"}) == 2
    assert r.get_sample_value("cad_corrections_total", {"verdict": "true_positive"}) == 1
    assert r.get_sample_value("cad_label_conflicts_total") == 1


def test_idempotent_retry_returns_the_same_receipt(
    review: ReviewService, store: SqlLabelStore
) -> None:
    add_image(store, "r1")
    a = review.submit_correction("r1-1", "TRUE_POSITIVE", "dr.a", "key-1", "note")
    b = review.submit_correction("r1-1", "TRUE_POSITIVE", "dr.a", "key-1", "note")
    assert b.replayed and not a.replayed and b.event == a.event
    with pytest.raises(AlreadyExists, match="key-1"):
        review.submit_correction("r1-1", "FALSE_POSITIVE", "dr.a", "key-1", "note")
    assert len(store.labels.events()) == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("nope", "TRUE_POSITIVE", "dr.a", "k"), NotFound),
        (("r1-0", "", "dr.a", "k"), InvalidInput),
        (("r1-0", "MAYBE", "dr.a", "k"), InvalidInput),
        (("r1-0", "TRUE_POSITIVE", "  ", "k"), InvalidInput),
        (("r1-0", "TRUE_POSITIVE", "dr.a", "k", "x" * 101), InvalidInput),
        (("", "TRUE_POSITIVE", "dr.a", "k"), InvalidInput),
    ],
)
def test_bad_corrections_write_nothing(
    review: ReviewService, store: SqlLabelStore, args: tuple, error: type
) -> None:
    add_image(store, "r1")
    with pytest.raises(error):
        review.submit_correction(*args)
    assert store.labels.events() == [] and store.queue.count_unlabeled() == 3


def test_missed_finding_creates_a_positive_candidate(
    review: ReviewService, store: SqlLabelStore
) -> None:
    add_image(store, "r1")
    receipt = review.add_missed_finding("r1", Box(50, 40, 30, 30), "dr.a", "m1")
    c = store.get_candidate(receipt.event.candidate_id)
    assert c.origin == "missed" and c.request_id == "r1" and (c.x, c.y) == (50, 40)
    assert receipt.event.label_after == 1 and receipt.event.kind == "missed"
    assert review.add_missed_finding("r1", Box(50, 40, 30, 30), "dr.a", "m1").replayed
    assert store.queue.count_unlabeled() == 3  # missed findings are labels, not queue entries
    with pytest.raises(NotFound):
        review.add_missed_finding("unknown", Box(1, 1, 5, 5), "dr.a", "m2")
    for bad in (Box(1, 1, 0, 5), Box(110, 10, 20, 20), Box(-1, 0, 5, 5)):
        with pytest.raises(InvalidInput):
            review.add_missed_finding("r1", bad, "dr.a", "m3")
    assert len(store.labels.events()) == 1


def test_queue_ranks_unlabeled_candidates_by_the_chosen_variant(
    review: ReviewService, store: SqlLabelStore
) -> None:
    ids = add_image(store, "r1", n=6, seed=1) + add_image(store, "r2", n=4, seed=2)
    review.submit_correction(ids[0], "TRUE_POSITIVE", "dr.a", "k")
    for variant in ("entropy", "diversity_alpha", "entropy_diversity_alpha"):
        result = review.annotation_queue(5, variant)
        assert result.unlabeled == 9 and len(result.items) == 5
        assert ids[0] not in [e.candidate_id for e, _ in result.items]
        everything = review.annotation_queue(100, variant).items
        expected = aift_scores(np.stack([e.patch_probs for e, _ in everything]), variant)
        np.testing.assert_allclose([s for _, s in everything], expected, rtol=1e-9)
        assert [s for _, s in everything] == sorted((s for _, s in everything), reverse=True)
    first = [e.candidate_id for e, _ in review.annotation_queue(9, "random", seed=5).items]
    again = [e.candidate_id for e, _ in review.annotation_queue(9, "random", seed=5).items]
    other = [e.candidate_id for e, _ in review.annotation_queue(9, "random", seed=6).items]
    assert first == again and first != other
    with pytest.raises(InvalidInput):
        review.annotation_queue(5, "magic")


def test_the_literature_baselines_are_served_from_the_store(
    review: ReviewService, store: SqlLabelStore
) -> None:
    ids = add_image(store, "b1", n=5, seed=3)
    p = [0.9, 0.52, 0.2, 0.45, 0.05]
    patches = [np.tile([[1 - q, q]], (24, 1)).astype(np.float32) for q in p]
    store.pool.update_predictions(
        "2", [(c, x, q, 0.0, 0.0, 0.0) for c, x, q in zip(ids, patches, p, strict=True)]
    )
    review.submit_correction(ids[1], "FALSE_POSITIVE", "dr.a", "k")
    margin = review.annotation_queue(10, "margin").items
    assert [e.candidate_id for e, _ in margin] == [ids[3], ids[2], ids[0], ids[4]]
    expected = margin_scores(np.stack([patches[i] for i in (3, 2, 0, 4)]))
    np.testing.assert_allclose([s for _, s in margin], expected, rtol=1e-6)
    with pytest.raises(NotScored):  # no keys written yet: said, not an empty queue
        review.annotation_queue(5, "bald")
    store.queue.put_queue_keys("bald", "2", [(ids[0], 0.1), (ids[4], 0.7), (ids[1], 0.9)])
    bald = [e.candidate_id for e, _ in review.annotation_queue(5, "bald").items]
    assert bald == [ids[4], ids[0]]  # the labelled one and the unkeyed ones are not offered
    store.queue.put_queue_keys("bald", "3", [(ids[2], 0.3)])  # a re-scoring replaces them all
    assert store.queue.queue_key_versions("bald") == {"3": 1}
    assert [e.candidate_id for e, _ in review.annotation_queue(5, "bald").items] == [ids[2]]
    review.whole_frames = False  # the baselines' own order, claimed candidate by candidate
    a = review.annotation_queue(2, "margin", reviewer="dr.a", claim_s=60).items
    b = review.annotation_queue(2, "margin", reviewer="dr.b", claim_s=60).items
    assert [e.candidate_id for e, _ in a] == [ids[3], ids[2]]
    assert [e.candidate_id for e, _ in b] == [ids[0], ids[4]]  # claims hold for baselines too
    with pytest.raises(InvalidInput):
        review.annotation_queue(5, "margin", omega=5)
    with pytest.raises(ValueError):
        store.queue.put_queue_keys("margin", "3", [])


def test_the_audit_slice_is_uniform_served_at_random_and_measured_by_version(
    review: ReviewService, store: SqlLabelStore
) -> None:
    from cad.labels.store.rows import in_audit_slice

    store.audit_fraction = 0.2
    ids: list[str] = []
    for k in range(40):
        ids += add_image(store, f"audit-{k}", n=10, seed=k)
    store.audit_fraction = 0.0  # later records (none here) would not join
    member = {c for c in ids if in_audit_slice(c, 0.2)}
    assert 60 <= len(member) <= 100  # 400 candidates at 0.2: 80 expected (fixed ids: no flake)
    everything = review.annotation_queue(1000, "entropy").items
    order = [e.candidate_id for e, _ in everything]
    assert not member & set(order)  # a ranking never chooses from the slice
    assert len(order) == 400 - len(member)
    # membership does not follow the score: the slice's scores spread like the pool's
    scores = aift_scores(np.stack([store.get_candidate(c).patch_probs for c in ids]), "entropy")
    rank = {c: r for r, c in enumerate(np.array(ids)[np.argsort(-scores, kind="stable")])}
    mean_rank = np.mean([rank[c] for c in member]) / len(ids)
    assert 0.35 < mean_rank < 0.65
    store.audit_fraction = 0.2  # the server's setting also governs serving
    queue = review.annotation_queue(50, "entropy", seed=7).items
    served = [e.candidate_id for e, _ in queue]
    audit_items = [c for c in served if c in member]
    assert len(served) == 50 and 3 <= len(audit_items) <= 20
    ranked_part = [c for c in served if c not in member]
    assert ranked_part == order[: len(ranked_part)]  # the rest is the ranking, in order
    values = [s for _, s in queue]
    assert values == sorted(values, reverse=True)  # nothing in the scores gives them away
    # labelled audit items are measured per version, settled ones only
    for i, c in enumerate(audit_items):
        review.submit_correction(c, "TRUE_POSITIVE" if i % 2 else "FALSE_POSITIVE", "dr.a", c)
    by_version = store.queue.audit_slice_scores()
    assert list(by_version) == ["1"] and len(by_version["1"][0]) == len(audit_items)
    assert {x.candidate.candidate_id for x in store.queue.labeled() if x.audit_slice} == set(
        audit_items
    )
    store.audit_fraction = 0.0
    from prometheus_client import generate_latest

    from cad.measures import roc_auc

    scraped = ServiceMetrics(CollectorRegistry())
    scraped.bind_store(
        store.queue.count_unlabeled,
        store.queue.precision_by_version,
        audit_slice=store.queue.audit_slice_scores,
    )
    text = generate_latest(scraped.registry).decode()
    y, p = by_version["1"]
    assert f'cad_audit_slice_labels{{label="finding",version="1"}} {float(sum(y))}' in text
    assert f'cad_audit_slice_auc{{bound="estimate",version="1"}} {roc_auc(y, p)}' in text
    assert 'bound="low"' in text and 'bound="high"' in text


def test_a_ranked_queue_takes_at_most_the_cap_from_one_source(
    review: ReviewService, store: SqlLabelStore
) -> None:
    ids = {k: add_image(store, f"cap-{k}", n=6, seed=k, study=f"1.9.{k}") for k in range(3)}
    source_of = {c: k for k, cs in ids.items() for c in cs}
    for variant in ("entropy", "margin", "entropy_alpha"):
        full = [e.candidate_id for e, _ in review.annotation_queue(100, variant).items]
        capped = [
            e.candidate_id for e, _ in review.annotation_queue(5, variant, per_source=2).items
        ]
        counts = {k: sum(source_of[c] == k for c in capped) for k in ids}
        assert len(capped) == 5 and max(counts.values()) == 2
        expected, seen = [], dict.fromkeys(ids, 0)  # greedy in ranked order
        for c in full:
            if seen[source_of[c]] < 2:
                seen[source_of[c]] += 1
                expected.append(c)
        assert capped == expected[:5]
    review.whole_frames = False  # the cap counts candidates (each frame of 6 is one source)
    a = review.annotation_queue(3, "entropy", reviewer="dr.a", claim_s=60, per_source=1).items
    b = review.annotation_queue(3, "entropy", reviewer="dr.b", claim_s=60, per_source=1).items
    assert len({source_of[e.candidate_id] for e, _ in a}) == 3  # one per source, claimed
    assert len(b) == 3 and not {e.candidate_id for e, _ in a} & {e.candidate_id for e, _ in b}
    review.per_source = 1  # the server's setting is the default
    assert len(review.annotation_queue(10, "entropy").items) == 3  # 3 sources, one each
    review.per_source = 0
    with pytest.raises(InvalidInput):
        review.annotation_queue(3, "entropy", per_source=-1)


def test_the_pool_is_read_in_pages_by_key_and_its_shards_cover_it_exactly_once(
    review: ReviewService, store: SqlLabelStore
) -> None:
    ids = []
    for k in range(12):
        ids += add_image(store, f"pool-{k}", n=5, seed=k)
    review.submit_correction(ids[0], "TRUE_POSITIVE", "dr.a", "k")
    pool = sorted(ids[1:])

    def walk(**kw: Any) -> list[str]:
        seen, after = [], ""
        while page := store.pool.pool_page(after, 7, **kw):
            seen += [r.candidate_id for r in page]
            after = page[-1].candidate_id
        return seen

    assert walk() == pool and store.pool.pool_count() == len(pool)
    for n in (1, 2, 3, 5):
        shards = [walk(shard=(i, n)) for i in range(n)]
        assert sorted(c for part in shards for c in part) == pool  # each exactly once
        assert [store.pool.pool_count(shard=(i, n)) for i in range(n)] == [len(p) for p in shards]
    assert all(len(walk(shard=(i, 3))) > 5 for i in range(3))  # a fair share each
    with pytest.raises(ValueError):
        store.pool.pool_page("", 5, shard=(3, 3))
    # what a version already scored is left out: a stopped re-scoring goes on
    first = pool[:20]
    store.pool.update_predictions(
        "7", [(c, store.get_candidate(c).patch_probs, 0.5, 1.0, 1.0, 1.0) for c in first]
    )
    assert walk(skip_version="7") == pool[20:] and store.pool.pool_count("7") == len(pool) - 20
    assert walk(skip_version="8") == pool
    # what the queue's top was scored by, for the alert on a re-scoring that never got there
    from prometheus_client import generate_latest

    from cad.aift import VARIANTS

    scraped = ServiceMetrics(CollectorRegistry())
    top = VARIANTS["entropy_alpha"]
    scraped.bind_store(
        store.queue.count_unlabeled,
        store.queue.precision_by_version,
        top_versions=lambda: store.queue.top_scored_versions(top),
    )
    versions = store.queue.top_scored_versions(top)
    assert len(versions) == 20 and set(versions) <= {"1", "7"}
    oldest = min(int(v) for v in versions)
    assert (
        f"cad_queue_top_oldest_scored_version {float(oldest)}"
        in generate_latest(scraped.registry).decode()
    )
    store.pool.update_predictions(
        "9", [(c, store.get_candidate(c).patch_probs, 0.5, 1.0, 1.0, 1.0) for c in pool]
    )
    assert "cad_queue_top_oldest_scored_version 9.0" in generate_latest(scraped.registry).decode()


def test_workers_read_a_window_by_shard_while_another_worker_reads_and_writes(
    store: SqlLabelStore, store_url: str
) -> None:
    ids = []
    for k in range(8):
        ids += add_image(store, f"window-{k}", n=4, seed=k)
    window = ids[::2]
    parts = [[r.candidate_id for r in store.pool.pool_rows(window, shard=(i, 2))] for i in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(window)  # each of the window once
    assert set(parts[0]) == {
        r.candidate_id for r in store.pool.pool_page("", 100, shard=(0, 2))
    } & set(window)
    # one worker's read (a window of half a million takes a while) is open while another
    # worker reads its part and writes its scores: neither waits for it (SQLite took a write
    # lock for every read, and a long one held the others past their busy timeout)
    other = open_store(store_url)
    try:

        def long_read(cur: Any) -> tuple[int, list[str], int]:
            cur.execute(store.sql("SELECT COUNT(*) FROM candidates"))
            before = int(cur.fetchone()[0])
            seen = [r.candidate_id for r in other.pool.pool_rows(window, shard=(1, 2))]
            other.pool.update_predictions(
                "7", [(c, other.get_candidate(c).patch_probs, 0.5, 1, 1, 1) for c in seen]
            )
            return before, seen, other.pool.pool_count("7")

        before, seen, left = store._run(long_read, read=True)
        assert before == len(ids) and seen == parts[1] and left == len(ids) - len(parts[1])
    finally:
        other.close()
    assert store.pool.pool_rows(window, skip_version="7", shard=(1, 2)) == []


def test_a_budgeted_rescoring_finds_the_newest_arrivals_and_named_candidates_off_the_pool(
    review: ReviewService, store: SqlLabelStore
) -> None:
    ids = []
    for k in range(6):
        ids += add_image(store, f"recent-{k}", n=3, seed=k, created=f"2026-12-0{k + 1}T00:00:00")
    review.submit_correction(ids[-1], "TRUE_POSITIVE", "dr.a", "k")
    # newest first; the labelled one is no longer in the pool
    assert store.pool.newest_unlabeled(4) == [
        "recent-5-1",
        "recent-5-0",
        "recent-4-2",
        "recent-4-1",
    ]
    assert len(store.pool.newest_unlabeled(100)) == len(ids) - 1
    asked = [ids[-1], ids[3], "no-such-candidate", ids[0], ids[3]]
    assert [r.candidate_id for r in store.pool.pool_rows(asked)] == [ids[0], ids[3]]
    store.pool.update_predictions(
        "7", [(ids[0], store.get_candidate(ids[0]).patch_probs, 0.5, 1, 1, 1)]
    )
    assert [r.candidate_id for r in store.pool.pool_rows(asked, skip_version="7")] == [ids[3]]
    assert store.pool.pool_rows([]) == []


def test_export_since_and_precision_by_version(
    review: ReviewService, store: SqlLabelStore, metrics: ServiceMetrics
) -> None:
    a = add_image(store, "r1", version="1")
    b = add_image(store, "r2", version="2")
    review.submit_correction(a[0], "TRUE_POSITIVE", "dr.a", "k1")
    review.submit_correction(a[1], "FALSE_POSITIVE", "dr.a", "k2")
    cut = review.submit_correction(b[0], "TRUE_POSITIVE", "dr.a", "k3").event.created
    review.submit_correction(b[1], "TRUE_POSITIVE", "dr.a", "k4")
    exported = list(review.export())
    assert [x.candidate.candidate_id for x in exported] == [a[0], a[1], b[0], b[1]]
    assert (
        exported[0].image.sha256 == "sha-r1" and exported[0].image.sop_instance_uid == "1.2.3.4.5"
    )
    assert [x.candidate.candidate_id for x in review.export(since=cut)] == [b[1]]
    assert store.queue.precision_by_version() == {"1": (1, 1), "2": (2, 0)}
    r = metrics.registry
    assert r.get_sample_value("cad_model_live_precision", {"version": "1"}) == 0.5
    assert r.get_sample_value("cad_model_live_precision", {"version": "2"}) == 1.0
    assert r.get_sample_value("cad_annotation_queue_depth") == 2


def test_concurrent_reviewers_never_lose_or_duplicate_events(
    review: ReviewService, store: SqlLabelStore
) -> None:
    add_image(store, "r1", n=2)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(10):
                verdict = "TRUE_POSITIVE" if (worker + i) % 2 else "FALSE_POSITIVE"
                review.submit_correction(f"r1-{i % 2}", verdict, f"dr.{worker}", f"w{worker}-{i}")
                review.submit_correction(
                    f"r1-{i % 2}", verdict, f"dr.{worker}", f"w{worker}-{i}"
                )  # retry
        except BaseException as exc:  # noqa: BLE001  pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = store.labels.events()
    assert len(events) == 40
    for cid in ("r1-0", "r1-1"):
        mine = [e for e in events if e.candidate_id == cid]
        assert sorted(e.seq for e in mine) == list(range(1, 21))
        last = max(mine, key=lambda e: e.seq)
        assert (
            store.get_candidate(cid)
            and next(x for x in review.export() if x.candidate.candidate_id == cid).label
            == last.label_after
        )


def test_retention_prunes_only_unlabeled_images(
    review: ReviewService, store: SqlLabelStore, tmp_path: Path
) -> None:
    archive = ImageArchive(tmp_path / "archive")
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    shas = {}
    for i, rid in enumerate(("old-unlabeled", "old-labeled", "new-1", "new-2")):
        sha, size = archive.put(np.full((8, 8, 3), i, dtype=np.uint8))
        shas[rid] = sha
        add_image(store, rid, n=1, sha=sha, created=old if rid.startswith("old") else "")
    review.submit_correction("old-labeled-0", "FALSE_POSITIVE", "dr.a", "k")
    store.queue.put_queue_keys("bald", "1", [("old-unlabeled-0", 1.0), ("new-2-0", 0.5)])
    report = prune(store, archive, max_age_s=30 * 24 * 3600, max_unlabeled_bytes=None)
    assert report.images_removed == 1 and not archive.path(shas["old-unlabeled"]).exists()
    # the forgotten image's candidate leaves the pool and every queue with it
    assert store.queue.queue_key_versions("bald") == {"1": 1}
    assert "old-unlabeled-0" not in [r.candidate_id for r in store.pool.pool_page("", 100)]
    queued = [e.candidate_id for e, _ in review.annotation_queue(100, "random").items]
    assert "old-unlabeled-0" not in queued and "new-2-0" in queued
    assert archive.path(shas["old-labeled"]).exists()
    with pytest.raises(NotFound):
        store.get_candidate("old-unlabeled-0")
    report = prune(
        store, archive, max_age_s=None, max_unlabeled_bytes=1000
    )  # each image is 1000 bytes
    assert report.images_removed == 1 and not archive.path(shas["new-1"]).exists()
    assert archive.path(shas["new-2"]).exists() and archive.path(shas["old-labeled"]).exists()


def test_queue_with_custom_parameters_and_acft_sampling(
    review: ReviewService, store: SqlLabelStore
) -> None:
    from cad.aift import Variant

    add_image(store, "r1", n=12, seed=3)
    custom = review.annotation_queue(
        12, "entropy_diversity", overrides={"alpha": 0.5, "lambda2": 0.1}
    )
    expected = aift_scores(
        np.stack([e.patch_probs for e, _ in custom.items]), Variant("c", 1.0, 0.1, 0.5)
    )
    np.testing.assert_allclose([s for _, s in custom.items], expected, rtol=1e-9)
    top = {e.candidate_id for e, _ in review.annotation_queue(8, "entropy").items}
    sampled = review.annotation_queue(4, "entropy", seed=1, omega=2)
    assert len(sampled.items) == 4 and {e.candidate_id for e, _ in sampled.items} <= top
    with pytest.raises(InvalidInput):
        review.annotation_queue(4, "entropy", omega=0.5)
    with pytest.raises(InvalidInput):
        review.annotation_queue(4, "entropy", overrides={"alpha": 0.0})


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the archive fsyncs, in order."""
    import cad.labels.archive

    calls: list[Path] = []
    real = cad.labels.archive.fsync_path

    def recording(path: Path) -> None:
        real(path)
        calls.append(Path(path))

    monkeypatch.setattr(cad.labels.archive, "fsync_path", recording)
    return calls


def test_background_archive_fsyncs_in_batches_and_on_close(
    tmp_path: Path, fsyncs: list[Path]
) -> None:
    archive = ImageArchive(tmp_path / "archive", fsync="background", sync_interval_s=3600)
    shas = [archive.put(np.full((8, 8, 3), i, dtype=np.uint8))[0] for i in range(3)]
    for i, sha in enumerate(shas):  # complete and readable at once, fsynced later
        assert archive.get(sha)[0, 0, 0] == i
    assert archive.pending == 3 and fsyncs == []
    archive.flush()
    assert archive.pending == 0 and set(fsyncs) >= {archive.path(s) for s in shas}
    assert {archive.path(s).parent for s in shas} <= set(fsyncs)  # the renames too
    fsyncs.clear()
    last, _ = archive.put(np.full((8, 8, 3), 9, dtype=np.uint8))
    archive.close()
    assert archive.pending == 0 and archive.path(last) in fsyncs
    archive.put(np.full((8, 8, 3), 10, dtype=np.uint8))  # after close: synchronous
    assert archive.pending == 0


def test_background_syncer_fsyncs_without_being_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cad.labels.archive

    done = threading.Event()
    real = cad.labels.archive.fsync_path
    archive = ImageArchive(tmp_path / "archive", fsync="background", sync_interval_s=0.01)
    sha, _ = archive.put(np.zeros((8, 8, 3), dtype=np.uint8))

    def recording(path: Path) -> None:
        real(path)
        if Path(path) == archive.path(sha).parent:
            done.set()

    monkeypatch.setattr(cad.labels.archive, "fsync_path", recording)
    archive.put(np.ones((8, 8, 3), dtype=np.uint8))  # wakes the syncer
    assert done.wait(30) and archive.pending == 0
    archive.close()


def test_a_label_makes_its_image_durable_first(
    store: SqlLabelStore, metrics: ServiceMetrics, tmp_path: Path, fsyncs: list[Path]
) -> None:
    archive = ImageArchive(tmp_path / "archive", fsync="background", sync_interval_s=3600)
    review = ReviewService(store, metrics, archive=archive)
    first, _ = archive.put(np.full((16, 16, 3), 1, dtype=np.uint8))
    second, _ = archive.put(np.full((16, 16, 3), 2, dtype=np.uint8))
    add_image(store, "r1", n=1, sha=first)
    add_image(store, "r2", n=1, sha=second)
    assert archive.pending == 2
    review.submit_correction("r1-0", "TRUE_POSITIVE", "dr.a", "k1")
    assert (
        archive.path(first) in fsyncs
        and archive.path(second) not in fsyncs
        and archive.pending == 1
    )
    review.add_missed_finding("r2", Box(1, 1, 4, 4), "dr.a", "k2")
    assert archive.path(second) in fsyncs and archive.pending == 0
    with pytest.raises(NotFound):  # unknown candidates are refused as before
        review.submit_correction("nope-0", "TRUE_POSITIVE", "dr.a", "k3")
    archive.close()


def test_archive_fsync_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="each, background"):
        ImageArchive(tmp_path, fsync="never")


def test_relaxed_classification_commits_then_durable_again(
    store: SqlLabelStore, review: ReviewService
) -> None:
    """A relaxed record is stored and readable; the connection is back to durable commits for
    everything after it (labels above all)."""
    from dataclasses import replace as dc_replace

    ids = add_image(store, "fast", n=2)
    image = store.get_image("fast")
    store.record_classification(
        dc_replace(image, request_id="relaxed"),
        [dc_replace(store.get_candidate(ids[0]), candidate_id="relaxed-0", request_id="relaxed")],
        durable=False,
    )
    assert store.get_candidate("relaxed-0").request_id == "relaxed"
    query = "PRAGMA synchronous" if store.dialect.name == "sqlite" else "SHOW synchronous_commit"
    assert str(store._query(query)[0][0]) in ("2", "on")  # FULL / on
    review.submit_correction("relaxed-0", "TRUE_POSITIVE", "dr.a", "k")
    assert store.labels.events("relaxed-0")[0].label_after == 1


def test_the_audit_action_filter_finds_events_behind_the_limit(store: SqlLabelStore) -> None:
    """GetAuditTrail(action="pin") must find a pin behind many other events (the filter was
    applied after the LIMIT, so it returned nothing)."""
    for i in range(6):
        store.fleet.add_audit("swap", "server", "cad", {"version": i})
    pin = store.fleet.add_audit("pin", "ops", "cad", {"version": 2})
    add_image(store, "r1")
    store.labels.add_label("r1-0", 1, "dr.a", "", "k-audit", "body")
    assert [e.event_id for e in store.fleet.audit(action="pin", limit=3)] == [pin.event_id]
    assert [e.action for e in store.fleet.audit(action="correction", limit=3)] == ["correction"]
    assert store.fleet.audit(action="missed_finding", limit=3) == []
    assert len(store.fleet.audit(limit=3)) == 3 and len(store.fleet.audit()) == 8


def test_a_lease_is_exclusive_names_its_holder_and_is_released(store: SqlLabelStore) -> None:
    first = store.lease("trainer", "cad train watch on host-a (pid 1)").acquire()
    with pytest.raises(LeaseHeld, match=r"held by cad train watch on host-a \(pid 1\)"):
        store.lease("trainer", "cad train round on host-b (pid 2)").acquire()
    with store.lease("archive-prune", "server on host-b (pid 2)"):  # another name: its own
        pass
    first.ensure()  # still held
    first.release()
    with store.lease("trainer", "cad train round on host-b (pid 2)"):
        pass


def test_a_pruner_racing_a_writer_never_leaves_a_row_pointing_at_a_deleted_file(
    store: SqlLabelStore, tmp_path: Path
) -> None:
    """Another replica records a frame whose image (same content) a pruner is deleting: in
    both orders the row that ends up stored has its file."""
    from cad.imaging import DecodedImage
    from cad.labels.recorder import Recorder
    from cad.models.inference import CandidateResult, ClassifyOutcome

    archive = ImageArchive(tmp_path / "archive")
    pixels = np.full((8, 8, 3), 7, dtype=np.uint8)
    sha, _ = archive.put(pixels)

    # 1. the pruner moved the blob aside, then the writer's row landed: its re-check keeps it
    def row_lands_meanwhile() -> bool:
        add_image(store, "writer-1", n=1, sha=sha)
        return store.sha_in_use(sha)

    assert not archive.delete_unless_used(sha, row_lands_meanwhile)
    assert archive.path(sha).exists() and not list(archive.path(sha).parent.glob(".*pruning"))

    # 2. the pruner deleted the blob after the writer's put, before its row: the writer puts it
    # back once its row is stored
    recorder = Recorder(store, archive)
    original = store.record_classification

    def pruned_in_between(*args: object, **kw: object) -> None:
        archive.delete(sha)
        original(*args, **kw)  # type: ignore[arg-type]

    store.record_classification = pruned_in_between  # type: ignore[method-assign]
    box = Box(1, 1, 4, 4)
    outcome = ClassifyOutcome(
        "writer-2",
        1,
        0,
        "single",
        DecodedImage(pixels, 0),
        [
            CandidateResult(
                "writer-2-0",
                "c",
                box,
                probability=0.5,
                patches=1,
                entropy=0.1,
                diversity=0.2,
                score=0.3,
            )
        ],
    )
    recorder.record(outcome, np.full((1, 1, 2), 0.5, dtype=np.float32))
    assert store.get_image("writer-2").sha256 == sha and archive.path(sha).exists()

    # 3. nothing refers to it any more: the pruner deletes it
    store.record_classification = original  # type: ignore[method-assign]
    for rid in ("writer-1", "writer-2"):
        assert store.delete_unlabeled_image(rid)
    assert archive.delete_unless_used(sha, lambda: store.sha_in_use(sha))
    assert not archive.path(sha).exists()


def test_event_times_come_from_the_database_clock_on_postgresql(
    store: SqlLabelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas' clocks differ; label order and labeled(since) must not: on PostgreSQL every
    event time is the database's (SQLite lives on one machine, whose clock it uses)."""
    import cad.labels.store.core as core

    monkeypatch.setattr(core, "now", lambda: "1999-01-01T00:00:00.000000+00:00")  # a skewed replica
    add_image(store, "r-clock", n=1)
    receipt = store.labels.add_label("r-clock-0", 1, "dr.a", "", "k-clock", "body")
    audit = store.fleet.add_audit("pin", "ops", "cad")
    times = [receipt.event.created, audit.created, store.get_image("r-clock").created]
    if store.dialect.name == "postgresql":
        assert not [t for t in times if t.startswith("1999")], times
        assert receipt.event.created <= store.db_now()
    else:
        assert all(t.startswith("1999") for t in times), times


def test_the_queue_is_ranked_in_sql_exactly_as_scoring_every_candidate_would(
    review: ReviewService, store: SqlLabelStore
) -> None:
    """Named variants and custom weights come from the stored terms with a LIMIT, in the order
    and with the scores that scoring every unlabeled candidate's patches gives; a named variant
    reads its own index (its cost does not grow with the pool)."""
    from cad.aift import VARIANTS, Variant

    for i in range(6):
        add_image(store, f"r{i}", n=7, seed=i)
    entries = store.queue.unlabeled()
    probs = np.stack([e.patch_probs for e in entries])
    specs = [*VARIANTS.values(), Variant("custom", 0.3, 2.0), Variant("custom_a", 1.0, 0.5, 0.25)]
    for spec in specs:
        scores = aift_scores(probs, spec)
        expected = sorted(range(len(entries)), key=lambda i: (-scores[i], entries[i].candidate_id))
        got = store.queue.ranked_unlabeled(spec, 10)
        assert [e.candidate_id for e, _ in got] == [entries[i].candidate_id for i in expected[:10]]
        # the same sums (stored terms summed once per record vs once over the pool): equal up to
        # the last bits of a float, whatever the processor's vector width
        assert [s for _, s in got] == pytest.approx(
            [scores[i] for i in expected[:10]], rel=1e-12, abs=1e-12
        ), spec.name
    sqlite = store.dialect.name == "sqlite"
    plan_sql = (
        "SELECT c.candidate_id FROM candidates c"
        + (" INDEXED BY queue_entropy_diversity_alpha" if sqlite else "")  # as ranked_unlabeled
        + " WHERE c.label IS NULL AND c.origin = 'model' AND c.patch_probs IS NOT NULL "
        "ORDER BY (c.entropy_alpha + c.diversity_alpha) DESC, c.candidate_id LIMIT 5"
    )

    def explain(cur: Any) -> list[tuple[Any, ...]]:
        if not sqlite:  # a 42-row table: make the planner show the index it uses at scale
            cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + plan_sql)
        return list(cur.fetchall())

    plan = " ".join(str(r) for r in store._run(explain))
    assert "queue_entropy_diversity_alpha" in plan and "TEMP B-TREE" not in plan, plan


def ask_at_once(
    services: list[ReviewService], names: tuple[str, str], limit: int
) -> dict[str, list[str]]:
    """Two reviewers ask for a queue at the same moment (a thread each, released together), each
    through a service of their own, as two replicas would: the ids each got, by name."""
    barrier = threading.Barrier(len(names))
    got: dict[str, list[str]] = {}

    def ask(name: str, service: ReviewService) -> None:
        barrier.wait()
        result = service.annotation_queue(limit, "entropy", reviewer=name, claim_s=600)
        got[name] = [e.candidate_id for e, _ in result.items]

    threads = [
        threading.Thread(target=ask, args=(n, s)) for n, s in zip(names, services, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return got


def test_two_reviewers_asking_at_once_get_disjoint_claimed_items(
    store: SqlLabelStore, store_url: str, metrics: ServiceMetrics
) -> None:
    """Claims, with a connection per reviewer as two replicas would have: disjoint queues, one's
    own items again on asking again, a verdict or an ended claim frees an item."""
    for i in range(5):
        add_image(store, f"q{i}", n=8, seed=i)  # 40 unlabeled
    stores = [open_store(store_url) for _ in range(2)]
    services = [ReviewService(s, metrics) for s in stores]
    for service in services:  # claims candidate by candidate (whole frames: the test below)
        service.whole_frames = False
    try:
        got = ask_at_once(services, ("dr.a", "dr.b"), 15)
        assert len(got["dr.a"]) == len(got["dr.b"]) == 15
        assert not set(got["dr.a"]) & set(got["dr.b"])  # nobody gets another's item
        best = [e.candidate_id for e, _ in services[0].annotation_queue(40, "entropy").items]
        assert set(got["dr.a"]) | set(got["dr.b"]) == set(best[:30])  # the best 30 between them
        again = services[0].annotation_queue(15, "entropy", reviewer="dr.a", claim_s=600)
        assert {e.candidate_id for e, _ in again.items} == set(got["dr.a"])  # still theirs
        third = services[1].annotation_queue(15, "entropy", reviewer="dr.c", claim_s=600)
        assert {e.candidate_id for e, _ in third.items} == set(best[30:40])
        # a verdict frees the item for good; an ended claim frees it for others
        services[0].submit_correction(got["dr.a"][0], "TRUE_POSITIVE", "dr.a", "k-claim")
        store._run(  # dr.b's claims end
            lambda cur: cur.execute(
                store._sql("UPDATE candidates SET claimed_until = ? WHERE claimed_by = ?"),
                ("2000-01-01T00:00:00+00:00", "dr.b"),
            )
        )
        later = services[1].annotation_queue(15, "entropy", reviewer="dr.d", claim_s=600)
        assert {e.candidate_id for e, _ in later.items} == set(got["dr.b"])
        # a skip gives one item back at once, and only the skipper's own claim
        skipped, kept = got["dr.a"][1], got["dr.a"][2]
        assert services[1].release_claims("dr.d", [skipped]) == 0  # not dr.d's to give back
        assert services[0].release_claims("dr.a", [skipped]) == 1
        assert services[0].release_claims("dr.a", [skipped]) == 0  # a double click: no-op
        after_skip = services[1].annotation_queue(1, "entropy", reviewer="dr.e", claim_s=600)
        assert [e.candidate_id for e, _ in after_skip.items] == [skipped]
        assert services[0].release_claims("dr.a") == 13  # a sign-out: all of dr.a's others
        after_out = services[1].annotation_queue(20, "entropy", reviewer="dr.e", claim_s=600)
        assert kept in {e.candidate_id for e, _ in after_out.items}
        assert services[0].release_claims("") == 0  # without authentication nothing is claimed
        # without a reviewer (the experiment's oracle) there are no claims: the plain ranking
        plain = services[0].annotation_queue(5, "entropy")
        assert [e.candidate_id for e, _ in plain.items] == [c for c in best if c != got["dr.a"][0]][
            :5
        ]
    finally:
        for s in stores:
            s.close()


def test_a_disagreement_is_told_to_both_reviewers_and_settled_by_a_third(
    review: ReviewService, store: SqlLabelStore
) -> None:
    from trainer.data import labeled_examples, unsettled_count

    add_image(store, "d1", n=2)
    review.submit_correction("d1-0", "TRUE_POSITIVE", "dr.a", "k-a")
    assert review.notices("dr.a") == []
    receipt = review.submit_correction("d1-0", "FALSE_POSITIVE", "dr.b", "k-b")
    assert receipt.event.conflict
    review.submit_correction("d1-1", "FALSE_POSITIVE", "dr.b", "k-b2")  # no dispute
    # both are told, once each, naming the other reviewer and both verdicts
    (told_a,) = review.notices("dr.a")
    assert (told_a.other_reviewer, told_a.your_label, told_a.their_label) == ("dr.b", 1, 0)
    (told_b,) = review.notices("dr.b")
    assert (told_b.other_reviewer, told_b.your_label, told_b.their_label) == ("dr.a", 0, 1)
    assert review.notices("dr.a") == [] and review.notices("dr.b") == []
    # it waits for adjudication, out of training until then
    (conflict,) = review.conflicts()
    assert conflict.candidate.candidate_id == "d1-0"
    assert [(v.reviewer, v.label_after) for v in conflict.verdicts] == [("dr.a", 1), ("dr.b", 0)]
    assert [e.candidate_id for e in labeled_examples(store)] == ["d1-1"]
    assert unsettled_count(store) == 1
    with pytest.raises(PermissionDenied, match="gave a verdict"):  # PERMISSION_DENIED
        review.adjudicate("d1-0", "TRUE_POSITIVE", "dr.a", "k-adj-a")
    with pytest.raises(NotDisputed, match="no disagreement"):  # FAILED_PRECONDITION
        review.adjudicate("d1-1", "TRUE_POSITIVE", "dr.c", "k-adj-x")
    settled = review.adjudicate("d1-0", "TRUE_POSITIVE", "dr.c", "k-adj", note="clear polyp")
    assert settled.event.kind == "adjudication" and settled.event.label_after == 1
    assert review.adjudicate("d1-0", "TRUE_POSITIVE", "dr.c", "k-adj", note="clear polyp").replayed
    with pytest.raises(Settled, match="is an adjudication: it settled candidate"):
        review.retract(settled.event.event_id, "dr.c", "k-undo-adj")  # final, and said so
    assert review.conflicts() == []
    # final: what the trainer and the export use; later corrections are refused
    assert {e.candidate_id: e.label for e in labeled_examples(store)} == {"d1-0": 1, "d1-1": 0}
    (exported,) = [x for x in store.queue.labeled() if x.candidate.candidate_id == "d1-0"]
    assert exported.label == 1 and exported.adjudicated and exported.conflict
    with pytest.raises(Settled):
        review.submit_correction("d1-0", "FALSE_POSITIVE", "dr.b", "k-b3")
    assert [e.action for e in store.fleet.audit(action="adjudication")] == ["adjudication"]


def test_undo_is_a_retraction_of_ones_own_latest_event(
    review: ReviewService, store: SqlLabelStore
) -> None:
    add_image(store, "u1", n=2)
    first = review.submit_correction("u1-0", "TRUE_POSITIVE", "dr.a", "k-1").event
    undone = review.retract(first.event_id, "dr.a", "k-undo")
    assert undone.event.kind == "retraction" and undone.event.label_after == -1
    assert review.retract(first.event_id, "dr.a", "k-undo").replayed  # a retried undo: once
    assert "u1-0" in {e.candidate_id for e in store.queue.unlabeled()}  # back in the queue
    assert [x.candidate.candidate_id for x in store.queue.labeled()] == []
    again = review.submit_correction("u1-0", "FALSE_POSITIVE", "dr.a", "k-2").event
    with pytest.raises(PermissionDenied, match="dr.a's, not dr.b's"):
        review.retract(again.event_id, "dr.b", "k-x")
    clash = review.submit_correction("u1-0", "TRUE_POSITIVE", "dr.b", "k-3").event
    assert clash.conflict and review.conflicts()
    with pytest.raises(Settled, match="labeled again since"):
        review.retract(again.event_id, "dr.a", "k-y")  # dr.b labeled it since
    review.retract(clash.event_id, "dr.b", "k-z")  # dr.b takes theirs back: no dispute left
    assert review.conflicts() == []
    (x,) = [x for x in store.queue.labeled() if x.candidate.candidate_id == "u1-0"]
    assert x.label == 0 and not x.conflict  # dr.a's verdict stands again
    assert [e.kind for e in store.labels.events("u1-0")] == [
        "correction",
        "retraction",
        "correction",
        "correction",
        "retraction",
    ]


def test_a_large_pool_is_never_read_whole(
    review: ReviewService, store: SqlLabelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above SCORE_ALL_MAX unlabeled candidates: random order off its index, ACFT sampling and
    other alphas within a window of the best by the stored terms; small pools stay exact."""
    import cad.labels.review as review_module

    for i in range(4):
        add_image(store, f"big{i}", n=10, seed=i)  # 40 unlabeled
    exact_omega = [
        e.candidate_id for e, _ in review.annotation_queue(4, "entropy", seed=3, omega=2).items
    ]
    exact_alpha = review.annotation_queue(5, "entropy", overrides={"alpha": 0.5})
    monkeypatch.setattr(review_module, "SCORE_ALL_MAX", 10)  # the pool is "large" now
    monkeypatch.setattr(review_module, "SCORE_WINDOW", 40)

    def no_full_read() -> None:
        raise AssertionError("the whole pool was read")

    monkeypatch.setattr(store.queue, "unlabeled", no_full_read)
    bounded = review.annotation_queue(4, "entropy", seed=3, omega=2)
    assert [e.candidate_id for e, _ in bounded.items] == exact_omega and bounded.unlabeled == 40
    alpha = review.annotation_queue(5, "entropy", overrides={"alpha": 0.5})
    assert [e.candidate_id for e, _ in alpha.items] == [
        e.candidate_id for e, _ in exact_alpha.items
    ]
    monkeypatch.setattr(review_module, "SCORE_WINDOW", 8)  # a window smaller than the pool
    windowed = review.annotation_queue(5, "entropy", overrides={"alpha": 0.5})
    top8 = {e.candidate_id for e, _ in review.annotation_queue(8, "entropy_alpha").items}
    assert len(windowed.items) == 5 and {e.candidate_id for e, _ in windowed.items} <= top8
    first = [e.candidate_id for e, _ in review.annotation_queue(9, "random", seed=5).items]
    again = [e.candidate_id for e, _ in review.annotation_queue(9, "random", seed=5).items]
    other = [e.candidate_id for e, _ in review.annotation_queue(9, "random", seed=6).items]
    assert first == again and len(set(first)) == 9 and first != other
    review.whole_frames = False  # claims of candidates off the random-key index
    claimed = review.annotation_queue(9, "random", seed=5, reviewer="dr.r", claim_s=600)
    rest = review.annotation_queue(40, "random", seed=5, reviewer="dr.s", claim_s=600)
    assert not {e.candidate_id for e, _ in claimed.items} & {e.candidate_id for e, _ in rest.items}
    assert len(rest.items) == 31  # everything dr.r does not hold


def test_a_pool_sample_is_uniform_seeded_and_moves_past_what_a_version_scored(
    store: SqlLabelStore,
) -> None:
    ids = []
    for k in range(20):
        ids += add_image(store, f"sample-{k}", n=5, seed=k)
    a, b = store.pool.pool_sample(1, 30), store.pool.pool_sample(2, 30)
    assert len(set(a)) == 30 and a == store.pool.pool_sample(1, 30) and a != b
    assert sorted(store.pool.pool_sample(1, 500)) == sorted(ids)  # wraps round to the whole pool
    assert len({c.split("-")[1] for c in a}) > 10  # spread over images, not a run of one
    store.pool.update_predictions(
        "7", [(c, store.get_candidate(c).patch_probs, 0.5, 1, 1, 1) for c in a]
    )
    again = store.pool.pool_sample(1, 30, skip_version="7")
    assert len(again) == 30 and not set(again) & set(a)


def test_others_claims_are_counted_with_when_the_first_ends(
    review: ReviewService, store: SqlLabelStore
) -> None:
    ids = add_image(store, "claimed", n=4)
    assert store.queue.others_claims("dr.b") == (0, "")
    assert store.queue.claim(ids[:2], "dr.a", 600, 10) == ids[:2]
    assert store.queue.claim(ids[2:3], "dr.c", 60, 10) == ids[2:3]
    count, first = store.queue.others_claims("dr.b")
    # the first to end is dr.c's (60 s), before dr.a's (600 s), which is all dr.c sees
    assert count == 3 and "" < first < store.queue.others_claims("dr.c")[1]
    assert store.queue.others_claims("dr.a")[0] == 1  # dr.c's, not dr.a's own
    review.submit_correction(ids[0], "TRUE_POSITIVE", "dr.a", "k-claimed")
    assert store.queue.others_claims("dr.b")[0] == 2  # a labelled item is nobody's claim any more
    store.queue.release_claims("dr.c")
    assert store.queue.others_claims("dr.b")[0] == 1


def test_a_fresh_first_queue_ranks_what_the_serving_version_scored_before_older_scores(
    review: ReviewService, store: SqlLabelStore
) -> None:
    """Scores of two versions are not comparable (an untrained first version calls everything
    uncertain): with ``fresh`` the candidates that version scored come first, in their order."""
    from cad.aift import VARIANTS

    ids = []
    for k in range(4):
        ids += add_image(store, f"fresh-{k}", n=5, seed=k)
    unsure = np.full((24, 2), 0.5, dtype=np.float32)  # as uncertain as can be
    store.pool.update_predictions("6", [(c, unsure, 0.5, 1, 1, 1) for c in ids[:10]])
    sure = np.tile(np.array([[0.9, 0.1]], dtype=np.float32), (24, 1))
    fresh = ids[10:]
    store.pool.update_predictions(
        "7", [(c, sure + 0.01 * i, 0.1, 1, 1, 1) for i, c in enumerate(fresh)]
    )
    spec = VARIANTS["entropy_alpha"]
    mixed = [e.candidate_id for e, _ in store.queue.ranked_unlabeled(spec, 5)]
    assert set(mixed) <= set(ids[:10])  # the stale, "uncertain" ones win a mixed ranking
    first = [e.candidate_id for e, _ in store.queue.ranked_unlabeled(spec, 5, fresh="7")]
    exact = [
        e.candidate_id for e, _ in store.queue.ranked_unlabeled(spec, 20) if e.candidate_id in fresh
    ]
    assert first == exact[:5]  # version 7's own top, in its order
    spill = [e.candidate_id for e, _ in store.queue.ranked_unlabeled(spec, 12, fresh="7")]
    assert spill[:10] == exact and set(spill[10:]) <= set(ids[:10])  # then the others
    review.fresh_version = lambda: "7"
    served = review.annotation_queue(3, "entropy_alpha").items
    assert [e.candidate_id for e, _ in served] == exact[:3]


def test_a_reviewer_is_handed_each_frame_whole_and_no_frame_is_split_between_two(
    store: SqlLabelStore, store_url: str, metrics: ServiceMetrics
) -> None:
    """Claims used to be per candidate, so two reviewers asking at once each got one or two
    candidates of the same frames. Now a reviewer gets the frames the ranking picks whole (its
    best candidate first, in a row), up to the limit unless the first frame alone is larger; a
    frame another reviewer holds part of is not handed out; picks whose frame did not fit go
    back at once."""
    frames = {f"w{i}": add_image(store, f"w{i}", n=3, seed=10 + i) for i in range(8)}
    frame_of = {cid: rid for rid, ids in frames.items() for cid in ids}
    stores = [open_store(store_url) for _ in range(2)]
    services = [ReviewService(s, metrics) for s in stores]

    def held() -> list[tuple[str, int]]:
        rows = store._run(
            lambda cur: cur.execute(
                "SELECT claimed_by, COUNT(*) FROM candidates WHERE claimed_by IS NOT NULL "
                "GROUP BY claimed_by ORDER BY claimed_by"
            ).fetchall()
        )
        return [(r[0], int(r[1])) for r in rows]

    def whole_and_in_a_row(ids: list[str]) -> list[str]:
        served = list(dict.fromkeys(frame_of[c] for c in ids))
        assert [frame_of[c] for c in ids] == [f for f in served for _ in range(3)]
        return served

    try:
        scores = {e.candidate_id: s for e, s in services[0].annotation_queue(24, "entropy").items}
        # one reviewer: the two best frames whole (a third would pass the limit of 7)
        first = [
            e.candidate_id
            for e, _ in services[0]
            .annotation_queue(7, "entropy", reviewer="dr.a", claim_s=600)
            .items
        ]
        assert len(first) == 6
        served = whole_and_in_a_row(first)
        best_of = {f: max(scores[c] for c in frames[f]) for f in frames}
        assert served == sorted(frames, key=lambda f: -best_of[f])[:2]  # by their best candidate
        assert all(scores[c] == best_of[frame_of[c]] for c in first[::3])  # that one first
        assert held() == [("dr.a", 6)]  # what was not served is not held
        # a frame another reviewer holds part of is not handed out
        third = sorted(frames, key=lambda f: -best_of[f])[2]
        stores[1].queue.claim([frames[third][1]], "dr.z", 600, 1)
        nxt = [
            e.candidate_id
            for e, _ in services[1]
            .annotation_queue(3, "entropy", reviewer="dr.b", claim_s=600)
            .items
        ]
        assert len(nxt) == 3 and third not in whole_and_in_a_row(nxt)
        stores[1].queue.release_claims("dr.z")
        # two reviewers asking at once: whole frames each, never one frame between the two
        got = ask_at_once(services, ("dr.c", "dr.d"), 6)
        c_frames, d_frames = whole_and_in_a_row(got["dr.c"]), whole_and_in_a_row(got["dr.d"])
        assert not set(c_frames) & set(d_frames) and len(got["dr.c"]) <= 6
        assert not {frame_of[c] for c in first + nxt} & set(c_frames + d_frames)
        mine = {"dr.a": 6, "dr.b": 3, "dr.c": len(got["dr.c"]), "dr.d": len(got["dr.d"])}
        assert dict(held()) == {k: n for k, n in mine.items() if n}  # held only what was served
        # candidate by candidate when the server says so (CAD_QUEUE_WHOLE_FRAMES=false)
        services[1].whole_frames = False
        one = services[1].annotation_queue(1, "entropy", reviewer="dr.e", claim_s=600)
        assert len(one.items) == 1
    finally:
        for s in stores:
            s.close()

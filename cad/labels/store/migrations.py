"""Numbered schema migrations, portable between SQLite and PostgreSQL.

Append new migrations; never edit an applied one. Each runs in one
transaction and is recorded in ``schema_migrations``.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "initial schema: images, candidates, label events",
        [
            """CREATE TABLE images (
                request_id TEXT PRIMARY KEY,
                sha256 TEXT NOT NULL,
                size_bytes BIGINT NOT NULL,
                height INTEGER NOT NULL,
                width INTEGER NOT NULL,
                frame_index INTEGER NOT NULL,
                source_kind TEXT NOT NULL,
                source_id TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                series_uid TEXT NOT NULL,
                sop_instance_uid TEXT NOT NULL,
                modality TEXT NOT NULL,
                recipe TEXT NOT NULL,
                model_version TEXT NOT NULL,
                labeled INTEGER NOT NULL DEFAULT 0,
                created TEXT NOT NULL
            )""",
            "CREATE INDEX images_sha256 ON images (sha256)",
            "CREATE INDEX images_unlabeled ON images (labeled, created)",
            """CREATE TABLE candidates (
                candidate_id TEXT PRIMARY KEY,
                request_id TEXT NOT NULL REFERENCES images (request_id),
                client_id TEXT NOT NULL,
                x DOUBLE PRECISION NOT NULL,
                y DOUBLE PRECISION NOT NULL,
                width DOUBLE PRECISION NOT NULL,
                height DOUBLE PRECISION NOT NULL,
                recipe TEXT NOT NULL,
                model_version TEXT NOT NULL,
                probability DOUBLE PRECISION,
                entropy DOUBLE PRECISION,
                diversity DOUBLE PRECISION,
                score DOUBLE PRECISION,
                patch_probs BYTEA,
                patch_shape TEXT,
                origin TEXT NOT NULL,
                label INTEGER,
                label_reviewer TEXT,
                label_event_id TEXT,
                labeled_at TEXT,
                events INTEGER NOT NULL DEFAULT 0,
                conflict INTEGER NOT NULL DEFAULT 0,
                created TEXT NOT NULL
            )""",
            "CREATE INDEX candidates_request ON candidates (request_id)",
            "CREATE INDEX candidates_unlabeled ON candidates (label, origin)",
            """CREATE TABLE label_events (
                event_id TEXT PRIMARY KEY,
                candidate_id TEXT NOT NULL REFERENCES candidates (candidate_id),
                seq INTEGER NOT NULL,
                kind TEXT NOT NULL,
                label_before INTEGER,
                label_after INTEGER NOT NULL,
                reviewer TEXT NOT NULL,
                note TEXT NOT NULL,
                idempotency_key TEXT NOT NULL UNIQUE,
                body_sha256 TEXT NOT NULL,
                conflict INTEGER NOT NULL,
                created TEXT NOT NULL,
                UNIQUE (candidate_id, seq)
            )""",
        ],
    ),
    (
        2,
        "pool re-scoring: which model version produced the stored patch predictions",
        [
            "ALTER TABLE candidates ADD COLUMN scored_version TEXT",
            "UPDATE candidates SET scored_version = model_version",
        ],
    ),
    (
        3,
        "audit trail of model publishes, swaps, pins and rollbacks (corrections live in label_events)",
        [
            """CREATE TABLE audit_events (
                event_id TEXT PRIMARY KEY,
                created TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                detail TEXT NOT NULL
            )""",
            "CREATE INDEX audit_events_created ON audit_events (created)",
        ],
    ),
    (
        4,
        "pins and replicas in the store: the pin every replica and the CLI follow (servers mount "
        "the registry read-only), and what each server process serves",
        [
            """CREATE TABLE model_pins (
                model TEXT PRIMARY KEY,
                version INTEGER,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL,
                updated TEXT NOT NULL
            )""",
            """CREATE TABLE replicas (
                replica_id TEXT PRIMARY KEY,
                model TEXT NOT NULL,
                version INTEGER,
                precision TEXT NOT NULL,
                host TEXT NOT NULL,
                started TEXT NOT NULL,
                seen TEXT NOT NULL
            )""",
        ],
    ),
    (
        5,
        "the annotation queue ranked in SQL: the alpha-majority entropy and diversity terms "
        "beside the all-patch ones, and an index per named variant over unlabeled candidates",
        [
            "ALTER TABLE candidates ADD COLUMN entropy_alpha DOUBLE PRECISION",
            "ALTER TABLE candidates ADD COLUMN diversity_alpha DOUBLE PRECISION",
            *(
                f"CREATE INDEX queue_{name} ON candidates (({expression}) DESC, candidate_id) "
                "WHERE label IS NULL AND origin = 'model' AND patch_probs IS NOT NULL"
                for name, expression in (
                    ("entropy", "entropy"),
                    ("diversity", "diversity"),
                    ("entropy_diversity", "entropy + diversity"),
                    ("entropy_alpha", "entropy_alpha"),
                    ("diversity_alpha", "diversity_alpha"),
                    ("entropy_diversity_alpha", "entropy_alpha + diversity_alpha"),
                )
            ),
        ],
    ),
    (
        6,
        "claims: a queue item handed to a reviewer is theirs until a verdict or the claim ends",
        [
            "ALTER TABLE candidates ADD COLUMN claimed_by TEXT",
            "ALTER TABLE candidates ADD COLUMN claimed_until TEXT",
        ],
    ),
    (
        7,
        "conflicts settled: an adjudicated label is final; reviewers are told of disagreements",
        [
            "ALTER TABLE candidates ADD COLUMN adjudicated INTEGER NOT NULL DEFAULT 0",
            """CREATE TABLE conflict_notices (
                notice_id TEXT PRIMARY KEY,
                reviewer TEXT NOT NULL,
                candidate_id TEXT NOT NULL REFERENCES candidates (candidate_id),
                your_label INTEGER NOT NULL,
                other_reviewer TEXT NOT NULL,
                their_label INTEGER NOT NULL,
                created TEXT NOT NULL,
                told INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX conflict_notices_reviewer ON conflict_notices (reviewer, told)",
        ],
    ),
    (
        8,
        "random order without reading the pool: a fixed pseudo-random key per candidate, indexed",
        [
            "ALTER TABLE candidates ADD COLUMN random_key DOUBLE PRECISION",
            "CREATE INDEX queue_random ON candidates (random_key, candidate_id) "
            "WHERE label IS NULL AND origin = 'model' AND patch_probs IS NOT NULL",
        ],
    ),
    (
        9,
        "review page sign-ins in the store, so that the review UI runs as several replicas: a "
        "hash of each session id, the reviewer's token sealed with a key only the id gives, and "
        "the frames each session's page was served",
        [
            """CREATE TABLE review_sessions (
                session_hash TEXT PRIMARY KEY,
                reviewer TEXT NOT NULL,
                sealed_token TEXT NOT NULL,
                started DOUBLE PRECISION NOT NULL,
                seen DOUBLE PRECISION NOT NULL,
                reviewed INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX review_sessions_seen ON review_sessions (seen)",
            """CREATE TABLE review_session_frames (
                session_hash TEXT NOT NULL
                    REFERENCES review_sessions (session_hash) ON DELETE CASCADE,
                request_id TEXT NOT NULL,
                shown DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (session_hash, request_id)
            )""",
        ],
    ),
    (
        10,
        "candidates that are not boxes on an image (pulmonary embolism points in CT volumes) "
        "keep where they are as JSON",
        ["ALTER TABLE candidates ADD COLUMN geometry TEXT NOT NULL DEFAULT ''"],
    ),
    (
        11,
        "the literature baselines as queue orders: margin off an index on the stored "
        "probability; BALD, Core-Set and TypiClust keys the trainer writes when it re-scores",
        [
            "CREATE INDEX queue_margin ON candidates ((0.5 - ABS(probability - 0.5)), "
            "candidate_id) WHERE label IS NULL AND origin = 'model' AND patch_probs IS NOT NULL",
            """CREATE TABLE queue_keys (
                method TEXT NOT NULL,
                candidate_id TEXT NOT NULL,
                sort_key DOUBLE PRECISION NOT NULL,
                model_version TEXT NOT NULL,
                PRIMARY KEY (method, candidate_id)
            )""",
            "CREATE INDEX queue_keys_order ON queue_keys (method, sort_key)",
        ],
    ),
    (
        12,
        "the audit slice: a uniform random fraction of the model's candidates, decided when they "
        "are recorded, served to reviewers at random and never trained on",
        [
            "ALTER TABLE candidates ADD COLUMN audit_slice INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX queue_audit_slice ON candidates (random_key, candidate_id) "
            "WHERE audit_slice = 1 AND label IS NULL AND origin = 'model' "
            "AND patch_probs IS NOT NULL",
        ],
    ),
    (
        13,
        "budgeted re-scoring refreshes the newest arrivals of the pool: an index on when they "
        "were recorded",
        [
            "CREATE INDEX queue_recent ON candidates (created, candidate_id) "
            "WHERE label IS NULL AND origin = 'model' AND patch_probs IS NOT NULL "
            "AND audit_slice = 0",
        ],
    ),
    (
        14,
        "a queue that ranks the candidates the serving version scored first (a budgeted "
        "re-scoring leaves older versions' scores, which are not comparable): the default "
        "ranking by version",
        [
            "CREATE INDEX queue_fresh ON candidates (scored_version, (entropy_alpha) DESC, "
            "candidate_id) WHERE label IS NULL AND origin = 'model' AND patch_probs IS NOT NULL "
            "AND audit_slice = 0",
        ],
    ),
    (
        15,
        "the live claims of unlabeled candidates, indexed: a reviewer's progress says how many "
        "items others hold without counting the pool",
        [
            "CREATE INDEX claims ON candidates (claimed_until) "
            "WHERE label IS NULL AND claimed_until IS NOT NULL",
        ],
    ),
]

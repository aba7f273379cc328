"""TLS and mutual TLS, bearer tokens with roles, open/closed health and reflection, the audit trail."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cad.labels.store import open_store
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.auth import TokenTable, token_sha256
from service.rpc.server import ServerThread
from support.helpers import make_settings, publish_tiny
from tests.tls import Pki, make_pki

TOKENS = {
    "infer": "tok-infer-0123456789abcdef",
    "review": "tok-review-0123456789abcdef",
    "admin": "tok-admin-0123456789abcdef",
}
RAW = cad_pb2.RawImage(
    height=48, width=48, channels=1, pixel_type=cad_pb2.RawImage.UINT8, pixels=bytes(range(48)) * 48
)
REQUEST = cad_pb2.ClassifyRequest(
    raw=RAW,
    recipe="single",
    candidates=[cad_pb2.Candidate(client_id="a", box=cad_pb2.Box(x=4, y=4, width=20, height=20))],
)


def bearer(role: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[role]}")]


def token_file(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "tokens": [
                    {
                        "identity": "tower-3",
                        "roles": ["infer"],
                        "sha256": token_sha256(TOKENS["infer"]),
                    },
                    {"identity": "dr.jones", "roles": ["review"], "token": TOKENS["review"]},
                    {
                        "identity": "ops.kim",
                        "roles": ["admin", "infer"],
                        "sha256": token_sha256(TOKENS["admin"]),
                    },
                ]
            }
        )
    )
    return path


@pytest.fixture
def secured(
    registry_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[ServerThread]:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(registry_root, auth_tokens_file=token_file(tmp_path / "tokens.json"))
    with ServerThread(settings) as server:
        server.refresh_models()
        yield server


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value.code()


def test_missing_unknown_and_wrong_role_tokens(
    secured: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(secured.address) as ch:
        infer = cad_pb2_grpc.CadInferenceStub(ch)
        review = cad_pb2_grpc.CadReviewStub(ch)
        admin = cad_pb2_grpc.ModelAdminStub(ch)
        assert code_of(infer.Classify, REQUEST, timeout=10) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            code_of(
                infer.Classify,
                REQUEST,
                timeout=10,
                metadata=[("authorization", "Bearer nope-nope")],
            )
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            code_of(
                infer.Classify, REQUEST, timeout=10, metadata=[("authorization", TOKENS["infer"])]
            )
            == grpc.StatusCode.UNAUTHENTICATED
        )  # no "Bearer" scheme
        response = infer.Classify(REQUEST, timeout=10, metadata=bearer("infer"))
        assert response.results[0].client_id == "a"
        correction = cad_pb2.Correction(
            candidate_id=response.results[0].candidate_id, verdict=cad_pb2.FALSE_POSITIVE
        )
        assert (
            code_of(review.SubmitCorrection, correction, timeout=10, metadata=bearer("infer"))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert (
            code_of(
                admin.PinVersion,
                cad_pb2.PinRequest(version="1"),
                timeout=10,
                metadata=bearer("review"),
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert (
            code_of(infer.Classify, REQUEST, timeout=10, metadata=bearer("review"))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        # Streams are checked too.
        stream = infer.ClassifyStream(iter([REQUEST]), timeout=10)
        assert code_of(lambda: list(stream)) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            len(
                list(
                    infer.ClassifyStream(
                        iter([REQUEST, REQUEST]), timeout=10, metadata=bearer("infer")
                    )
                )
            )
            == 2
        )
        # A client-streaming upload (a CT series) is authorised like every other call.
        upload = [cad_pb2.VolumeChunk(header=cad_pb2.VolumeHeader())]
        assert code_of(infer.ClassifyVolume, iter(upload), timeout=10) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            code_of(infer.ClassifyVolume, iter(upload), timeout=10, metadata=bearer("review"))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert (  # through to the handler: the empty upload is the caller's mistake
            code_of(infer.ClassifyVolume, iter(upload), timeout=10, metadata=bearer("infer"))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    metrics = secured.server.metrics.registry
    assert (
        metrics.get_sample_value(
            "cad_grpc_requests_total", {"method": "Classify", "code": "UNAUTHENTICATED"}
        )
        == 3
    )
    assert (
        metrics.get_sample_value(
            "cad_grpc_requests_total", {"method": "Classify", "code": "PERMISSION_DENIED"}
        )
        == 1
    )
    logged = "\n".join(r.getMessage() + str(r.args) for r in caplog.records)
    assert all(token not in logged for token in TOKENS.values())  # tokens are never logged


def test_reviewer_is_the_tokens_identity(secured: ServerThread) -> None:
    with grpc.insecure_channel(secured.address) as ch:
        result = (
            cad_pb2_grpc.CadInferenceStub(ch)
            .Classify(REQUEST, timeout=10, metadata=bearer("infer"))
            .results[0]
        )
        review = cad_pb2_grpc.CadReviewStub(ch)
        spoof = cad_pb2.Correction(
            candidate_id=result.candidate_id, verdict=cad_pb2.TRUE_POSITIVE, reviewer="dr.house"
        )
        assert (
            code_of(review.SubmitCorrection, spoof, timeout=10, metadata=bearer("review"))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        receipt = review.SubmitCorrection(
            cad_pb2.Correction(candidate_id=result.candidate_id, verdict=cad_pb2.TRUE_POSITIVE),
            timeout=10,
            metadata=bearer("review"),
        )
        assert receipt.event_id
    events = secured.server.store.labels.events(result.candidate_id)
    assert [e.reviewer for e in events] == ["dr.jones"]


def test_review_images_need_the_review_role(secured: ServerThread) -> None:
    with grpc.insecure_channel(secured.address) as ch:
        request_id = (
            cad_pb2_grpc.CadInferenceStub(ch)
            .Classify(REQUEST, timeout=10, metadata=bearer("infer"))
            .request_id
        )
        review = cad_pb2_grpc.CadReviewStub(ch)
        ask = cad_pb2.ReviewImageRequest(request_id=request_id)
        assert code_of(review.GetReviewImage, ask, timeout=10) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            code_of(review.GetReviewImage, ask, timeout=10, metadata=bearer("infer"))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        image = review.GetReviewImage(ask, timeout=10, metadata=bearer("review"))
        assert image.request_id == request_id and image.png.startswith(b"\x89PNG")
        stats = cad_pb2.ReviewStatsRequest()
        assert code_of(review.GetReviewStats, stats, timeout=10) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            code_of(review.GetReviewStats, stats, timeout=10, metadata=bearer("infer"))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        mine = review.GetReviewStats(stats, timeout=10, metadata=bearer("review"))
        assert mine.reviewer == "dr.jones"  # who the server takes the caller to be


def test_health_open_reflection_closed_by_default(secured: ServerThread) -> None:
    with grpc.insecure_channel(secured.address) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # no token needed
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        assert (
            code_of(lambda: list(stub.ServerReflectionInfo(iter([ask]), timeout=10)))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        names = list(stub.ServerReflectionInfo(iter([ask]), timeout=10, metadata=bearer("infer")))
        assert "cad.v1.CadInference" in {s.name for s in names[0].list_services_response.service}


def test_health_can_be_closed_and_reflection_opened(registry_root: Path, tmp_path: Path) -> None:
    settings = make_settings(
        registry_root,
        auth_tokens_file=token_file(tmp_path / "t.json"),
        auth_open_health=False,
        auth_open_reflection=True,
    )
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as ch:
        server.refresh_models()
        health = health_pb2_grpc.HealthStub(ch)
        assert (
            code_of(health.Check, health_pb2.HealthCheckRequest(), timeout=10)
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            health.Check(
                health_pb2.HealthCheckRequest(), timeout=10, metadata=bearer("infer")
            ).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        assert list(
            reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([ask]), timeout=10
            )
        )


def test_admin_actions_and_corrections_are_in_the_audit_trail(
    secured: ServerThread, tmp_path: Path
) -> None:
    publish_tiny(secured.server.settings.registry_root, tmp_path / "b")
    secured.refresh_models()  # swap 1 -> 2
    with grpc.insecure_channel(secured.address) as ch:
        admin = cad_pb2_grpc.ModelAdminStub(ch)
        admin.PinVersion(
            cad_pb2.PinRequest(version="1", reason="FP rate rose"),
            timeout=10,
            metadata=bearer("admin"),
        )
        admin.Unpin(cad_pb2.UnpinRequest(), timeout=10, metadata=bearer("admin"))
        result = (
            cad_pb2_grpc.CadInferenceStub(ch)
            .Classify(REQUEST, timeout=10, metadata=bearer("infer"))
            .results[0]
        )
        cad_pb2_grpc.CadReviewStub(ch).SubmitCorrection(
            cad_pb2.Correction(candidate_id=result.candidate_id, verdict=cad_pb2.FALSE_POSITIVE),
            timeout=10,
            metadata=bearer("review"),
        )
        assert (
            code_of(
                admin.GetAuditTrail, cad_pb2.AuditRequest(), timeout=10, metadata=bearer("review")
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
        trail = admin.GetAuditTrail(
            cad_pb2.AuditRequest(), timeout=10, metadata=bearer("admin")
        ).events
        pins = admin.GetAuditTrail(
            cad_pb2.AuditRequest(action="pin"), timeout=10, metadata=bearer("admin")
        ).events
    actions = [(e.action, e.actor, e.target) for e in trail]
    # load v1, swap to v2, pin v1 (recorded once the server serves it), unpin, back on v2, a correction
    assert [a for a, _, _ in actions] == [
        "swap",
        "swap",
        "swap",
        "pin",
        "unpin",
        "swap",
        "correction",
    ]
    assert actions[3] == ("pin", "ops.kim", "cad/v1") and actions[4] == ("unpin", "ops.kim", "cad")
    assert actions[2][2] == "cad/v1" and actions[5][2] == "cad/v2"
    assert actions[0][1].startswith("server:") and actions[-1] == (
        "correction",
        "dr.jones",
        result.candidate_id,
    )
    assert json.loads(trail[3].detail_json)["reason"] == "FP rate rose"
    assert [e.target for e in pins] == ["cad/v1"]
    assert trail == sorted(trail, key=lambda e: e.created)


def test_token_file_errors_never_echo_secrets(tmp_path: Path) -> None:
    bad = {"tokens": [{"identity": "x", "roles": ["infer"], "token": "short-secret"}]}
    with pytest.raises(ValueError) as err:
        TokenTable.from_json(bad)
    assert "short-secret" not in str(err.value)
    with pytest.raises(ValueError, match="roles"):
        TokenTable.from_json({"tokens": [{"identity": "x", "roles": ["root"], "token": "a" * 20}]})
    table = TokenTable.load(token_file(tmp_path / "t.json"))
    assert table.identify(TOKENS["admin"]).name == "ops.kim"  # type: ignore[union-attr]
    assert table.identify(TOKENS["admin"] + "x") is None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_channel(
    address: str, pki: Pki, client_cert: bool = False, ca: Path | None = None
) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(ca or pki.ca).read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(address.replace("127.0.0.1", "localhost"), creds)


def test_tls_on_the_grpc_port(registry_root: Path, pki: Pki) -> None:
    settings = make_settings(
        registry_root, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    )
    with ServerThread(settings) as server:
        server.refresh_models()
        with tls_channel(server.address, pki) as ch:
            assert cad_pb2_grpc.CadInferenceStub(ch).Classify(REQUEST, timeout=10).results
        with grpc.insecure_channel(server.address) as plain:  # plaintext is not spoken
            assert (
                code_of(cad_pb2_grpc.CadInferenceStub(plain).Classify, REQUEST, timeout=5)
                == grpc.StatusCode.UNAVAILABLE
            )
        with tls_channel(server.address, pki, ca=pki.other_ca) as wrong:  # server not trusted
            assert (
                code_of(cad_pb2_grpc.CadInferenceStub(wrong).Classify, REQUEST, timeout=5)
                == grpc.StatusCode.UNAVAILABLE
            )


def test_mutual_tls_requires_a_client_certificate(
    registry_root: Path, pki: Pki, tmp_path: Path
) -> None:
    from service.rpc.healthcheck import main as healthcheck

    settings = make_settings(
        registry_root,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
        auth_tokens_file=token_file(tmp_path / "t.json"),
    )
    with ServerThread(settings) as server:
        server.refresh_models()
        with tls_channel(server.address, pki) as anonymous:
            assert (
                code_of(
                    cad_pb2_grpc.CadInferenceStub(anonymous).Classify,
                    REQUEST,
                    timeout=5,
                    metadata=bearer("infer"),
                )
                == grpc.StatusCode.UNAVAILABLE
            )
        with tls_channel(server.address, pki, client_cert=True) as ch:
            stub = cad_pb2_grpc.CadInferenceStub(ch)
            assert (
                code_of(stub.Classify, REQUEST, timeout=10) == grpc.StatusCode.UNAUTHENTICATED
            )  # still a token
            assert stub.Classify(REQUEST, timeout=10, metadata=bearer("infer")).results
        # The container / Kubernetes probe speaks mutual TLS too.
        probe = [
            "--address",
            server.address,
            "--tls-ca",
            str(pki.ca),
            "--tls-server-name",
            "localhost",
        ]
        assert healthcheck(probe) == 1  # no client certificate
        assert (
            healthcheck(
                [*probe, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
            )
            == 0
        )


def test_half_configured_tls_is_refused(registry_root: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="both"):
        ServerThread(make_settings(registry_root, tls_cert_file=pki.server_cert)).start()


def test_cli_rollback_is_audited(registry_root: Path, tmp_path: Path) -> None:
    from cadcli.main import main as cad

    publish_tiny(registry_root, tmp_path / "b")
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    assert (
        cad(
            [
                "model",
                "rollback",
                "1",
                "--registry",
                str(registry_root),
                "--store-url",
                url,
                "--actor",
                "ops.kim",
                "--reason",
                "drill",
            ]
        )
        == 0
    )
    assert cad(["model", "unpin", "--registry", str(registry_root), "--store-url", url]) == 0
    store = open_store(url)
    trail = [(e.action, e.actor, e.target) for e in store.fleet.audit()]
    store.close()
    assert (
        trail[0] == ("pin", "ops.kim", "cad/v1")
        and trail[1][0] == "unpin"
        and "(cli)" in trail[1][1]
    )


def test_cli_rollback_refuses_a_version_servers_would_refuse(
    registry_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same load check as the PinVersion RPC: a version whose model file no longer matches
    its manifest's checksum is not pinned, and nothing is audited."""
    from cad.models.registry import MODEL_FILE, ModelRegistry
    from cadcli.main import main as cad

    info = publish_tiny(registry_root, tmp_path / "b")
    (info.path / MODEL_FILE).write_bytes(b"not an onnx model")
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    assert (
        cad(
            [
                "model",
                "rollback",
                str(info.version),
                "--registry",
                str(registry_root),
                "--store-url",
                url,
            ]
        )
        == 2
    )
    assert "servers would refuse it" in capsys.readouterr().err
    assert ModelRegistry(registry_root, "cad").pinned() is None
    store = open_store(url)
    assert list(store.fleet.audit()) == []
    store.close()


def test_a_revoked_token_is_refused_without_a_restart(
    secured: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    path = secured.server.settings.auth_tokens_file
    assert path is not None
    infer_only = {
        "tokens": [
            {"identity": "tower-3", "roles": ["infer"], "sha256": token_sha256(TOKENS["infer"])}
        ]
    }
    with grpc.insecure_channel(secured.address) as ch:
        stats = cad_pb2_grpc.CadReviewStub(ch).GetReviewStats
        assert stats(cad_pb2.ReviewStatsRequest(), timeout=10, metadata=bearer("review")).reviewer
        path.write_text(json.dumps(infer_only))  # dr.jones revoked, the server left running
        assert (
            code_of(stats, cad_pb2.ReviewStatsRequest(), timeout=10, metadata=bearer("review"))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        path.write_text('{"tokens": [')  # a half-written file: the last good table stays
        infer = cad_pb2_grpc.CadInferenceStub(ch)
        assert infer.Classify(REQUEST, timeout=10, metadata=bearer("infer")).results
        assert (
            code_of(stats, cad_pb2.ReviewStatsRequest(), timeout=10, metadata=bearer("review"))
            == grpc.StatusCode.UNAUTHENTICATED
        )
    assert "changed but was not loaded" in caplog.text and TOKENS["review"] not in caplog.text


def test_queue_claims_belong_to_the_token_identity(registry_root: Path, tmp_path: Path) -> None:
    """Two reviewers asking for the queue get different items: claims follow the token."""
    path = token_file(tmp_path / "tokens.json")
    table = json.loads(path.read_text())
    second = "lee-review-token-0123456789"
    table["tokens"].append({"identity": "dr.lee", "roles": ["review"], "token": second})
    path.write_text(json.dumps(table))
    with (
        ServerThread(make_settings(registry_root, auth_tokens_file=path)) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        server.refresh_models()
        for _ in range(4):
            cad_pb2_grpc.CadInferenceStub(ch).Classify(
                REQUEST, timeout=10, metadata=bearer("infer")
            )
        queue = cad_pb2_grpc.CadReviewStub(ch).GetAnnotationQueue
        jones = queue(cad_pb2.QueueRequest(limit=2), timeout=10, metadata=bearer("review"))
        lee = queue(
            cad_pb2.QueueRequest(limit=2),
            timeout=10,
            metadata=[("authorization", f"Bearer {second}")],
        )
        ids = [{i.candidate_id for i in r.items} for r in (jones, lee)]
        assert len(ids[0]) == len(ids[1]) == 2 and not ids[0] & ids[1]
        again = queue(cad_pb2.QueueRequest(limit=2), timeout=10, metadata=bearer("review"))
        assert {i.candidate_id for i in again.items} == ids[0]  # still dr.jones's
        # a skip gives an item back: only the caller's own claims, whoever they name
        release = cad_pb2_grpc.CadReviewStub(ch).ReleaseClaims
        lee_meta = [("authorization", f"Bearer {second}")]
        mine = sorted(ids[0])
        theirs = release(cad_pb2.ClaimRelease(candidate_ids=mine), timeout=10, metadata=lee_meta)
        assert theirs.released == 0
        given = release(
            cad_pb2.ClaimRelease(candidate_ids=mine[:1]), timeout=10, metadata=bearer("review")
        )
        assert given.released == 1
        lee_again = queue(cad_pb2.QueueRequest(limit=3), timeout=10, metadata=lee_meta)
        assert mine[0] in {i.candidate_id for i in lee_again.items}
        for blank in ([""], [mine[1], ""], ["", ""]):  # an empty id: a clear refusal, not INTERNAL
            with pytest.raises(grpc.RpcError) as err:
                release(
                    cad_pb2.ClaimRelease(candidate_ids=blank), timeout=10, metadata=bearer("review")
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "is empty: name each candidate" in (err.value.details() or "")
        assert (
            code_of(release, cad_pb2.ClaimRelease(), timeout=10, metadata=bearer("infer"))
            == grpc.StatusCode.PERMISSION_DENIED
        )


def test_disagreements_are_told_to_both_and_settled_over_grpc(
    registry_root: Path, tmp_path: Path
) -> None:
    path = token_file(tmp_path / "tokens.json")
    table = json.loads(path.read_text())
    others = {"dr.lee": "lee-review-token-0123456789", "dr.moss": "moss-review-token-0123456789"}
    table["tokens"] += [{"identity": n, "roles": ["review"], "token": t} for n, t in others.items()]
    path.write_text(json.dumps(table))

    def as_(name: str) -> list[tuple[str, str]]:
        return (
            bearer("review")
            if name == "dr.jones"
            else [("authorization", f"Bearer {others[name]}")]
        )

    with (
        ServerThread(make_settings(registry_root, auth_tokens_file=path)) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        server.refresh_models()
        cid = (
            cad_pb2_grpc.CadInferenceStub(ch)
            .Classify(REQUEST, timeout=10, metadata=bearer("infer"))
            .results[0]
            .candidate_id
        )
        review = cad_pb2_grpc.CadReviewStub(ch)

        def correct(name: str, verdict: int) -> cad_pb2.CorrectionReceipt:
            return review.SubmitCorrection(
                cad_pb2.Correction(candidate_id=cid, verdict=verdict),
                timeout=10,
                metadata=as_(name),
            )

        assert not correct("dr.jones", cad_pb2.TRUE_POSITIVE).notices
        second = correct("dr.lee", cad_pb2.FALSE_POSITIVE)
        assert second.conflict and [n.other_reviewer for n in second.notices] == ["dr.jones"]
        queue = review.GetAnnotationQueue(
            cad_pb2.QueueRequest(), timeout=10, metadata=as_("dr.jones")
        )
        (told,) = queue.notices  # the first reviewer hears of it on their next action
        assert told.other_reviewer == "dr.lee" and told.their_label == cad_pb2.NEGATIVE
        (conflict,) = review.GetConflicts(
            cad_pb2.ConflictsRequest(), timeout=10, metadata=as_("dr.moss")
        ).conflicts
        assert [v.reviewer for v in conflict.verdicts] == ["dr.jones", "dr.lee"]
        refused = code_of(
            review.Adjudicate,
            cad_pb2.Adjudication(candidate_id=cid, verdict=cad_pb2.TRUE_POSITIVE),
            timeout=10,
            metadata=as_("dr.lee"),
        )
        assert refused == grpc.StatusCode.PERMISSION_DENIED  # one of the two cannot settle it
        settled = review.Adjudicate(
            cad_pb2.Adjudication(
                candidate_id=cid, verdict=cad_pb2.TRUE_POSITIVE, idempotency_key="adj-1"
            ),
            timeout=10,
            metadata=as_("dr.moss"),
        )
        assert settled.label == cad_pb2.POSITIVE
        assert (
            code_of(correct, "dr.lee", cad_pb2.FALSE_POSITIVE)
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        (exported,) = [
            x
            for x in review.ExportLabels(
                cad_pb2.ExportRequest(), timeout=10, metadata=as_("dr.moss")
            )
            if x.candidate_id == cid
        ]
        assert exported.adjudicated and exported.label == cad_pb2.POSITIVE

"""Settings of the DICOM gateway (``CAD_GATEWAY_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from cad.settings import ClientSettings


class GatewaySettings(ClientSettings):
    """Where the gateway takes DICOM in, which CAD server classifies, where the SRs go."""

    model_config = SettingsConfigDict(env_prefix="CAD_GATEWAY_", extra="ignore")

    ae_title: str = Field(
        "CADGW",
        max_length=16,
        description="The gateway's own AE title; an association that calls another is refused.",
    )
    calling_aes: str = Field(
        "",
        description="Comma-separated AE titles allowed to send to the gateway (the PACS, the "
        "modalities); any other caller's association is refused and counted. Empty: any caller "
        "(said as a warning at start-up; set it in production).",
    )
    catch_up: str = Field(
        "",
        description="Orthanc's REST root (http://pacs:8042): the gateway reads its change log and "
        "fetches every instance it stored that the routing did not deliver (the gateway down, "
        "killed or restarting); empty: push only (gateway.catchup says why both).",
    )
    catch_up_credentials_file: Path | None = Field(
        None, description="File holding user:password for Orthanc's REST API, if it asks."
    )
    catch_up_caller: str = Field(
        "",
        description="The AE title instances fetched by the catch-up count as sent by (their mode, "
        "frame or sr); empty: the first of calling_aes, else ORTHANC.",
    )
    catch_up_interval_s: float = Field(
        10.0, gt=0, description="How often the catch-up reads the PACS's change log."
    )
    catch_up_delay_s: float = Field(
        30.0,
        ge=0,
        description="A stored instance younger than this is left to the push (nothing is "
        "downloaded twice while the gateway is up).",
    )
    sop_classes: str = Field(
        "",
        description="Comma-separated SOP Class UIDs the gateway classifies; empty: the images "
        "the CAD server decodes (gateway.policy.CLASSIFIABLE). Anything else is acknowledged, "
        "ignored and counted (SRs are read for their regions, never classified).",
    )
    host: str = Field("127.0.0.1", description="DICOM bind address of the gateway.")
    port: int = Field(11112, ge=0, le=65535, description="DICOM port of the gateway; 0 picks one.")
    metrics_port: int = Field(
        9466, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks one, -1 disables."
    )
    token_file: Path | None = Field(
        None, description="File holding the gateway's own infer token for the CAD server."
    )
    destination: str = Field(
        "",
        description="Where SRs are sent: AE@host:port (C-STORE to a PACS), or a DICOMweb service "
        "root http(s)://.../dicom-web (STOW-RS); empty: kept in the outgoing folder only.",
    )
    spool_dir: Path = Field(
        Path("data/gateway"),
        description="Durable folders: received images waiting to be classified, SRs waiting "
        "to be sent, and the instances already seen (a duplicate is answered once).",
    )
    mode: Literal["frame", "sr"] = Field(
        "frame",
        description="Where an image's candidates come from, unless its sender is named in "
        "sr_callers or frame_callers: frame (every frame one candidate, recipe frame) or sr (the "
        "regions of an upstream CAD's SR that references the image).",
    )
    sr_callers: str = Field(
        "", description="Comma-separated AE titles whose images take their candidates from an SR."
    )
    frame_callers: str = Field(
        "", description="Comma-separated AE titles whose images are classified whole-frame."
    )
    pair_wait_s: float = Field(
        600.0,
        gt=0,
        description="Longest an image waits for the SR that names its candidates (and an SR for "
        "its images); then it is set aside, unclassified, and counted.",
    )
    sr_grouping: Literal["series", "image"] = Field(
        "series",
        description="One SR per series (IHE AI Results: a workstation shows a series' results as "
        "one object; written once the series has been quiet for series_quiet_s) or per image "
        "(each SR as soon as its image is classified: a live feed that reads results at once).",
    )
    series_quiet_s: float = Field(
        5.0,
        gt=0,
        description="A series is complete once no instance of it has arrived for this long: its "
        "SR is written (sr_grouping series), or, a CT series whose upstream SR names 3D points "
        "(PE candidates), it is classified as one volume.",
    )
    rpc_timeout_s: float = Field(
        60.0, gt=0, description="Longest the gateway waits for one Classify call."
    )
    retry_max_s: float = Field(
        60.0, gt=0, description="Longest wait between retries while the CAD server is away."
    )
    send_retry_max_s: float = Field(
        5.0,
        gt=0,
        description="Longest wait between attempts to deliver an SR while the destination is "
        "away: the first SR goes within this long of its return.",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        description="Attempts at one object that fail for a reason of its own (a deadline, a "
        "server error) before it is set aside; the server being away counts for none.",
    )
    frames_per_turn: int = Field(
        8,
        ge=1,
        description="Frames of one object classified before the next object gets its turn: a "
        "long cine never holds up the images behind it.",
    )
    failed_retention_days: float = Field(
        7.0,
        gt=0,
        description="Objects set aside (refused, unreadable, unpaired) are kept this long for an "
        "operator to look at, then deleted: they hold patient data.",
    )

    @field_validator("catch_up")
    @classmethod
    def _http_only(cls, value: str) -> str:
        """The catch-up speaks HTTP to the PACS: nothing else is opened (no file: URLs)."""
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(
                f"catch_up must be an http(s):// URL of Orthanc's REST root, not {value!r}"
            )
        return value

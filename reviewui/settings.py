"""Settings of the review UI process (``CAD_REVIEW_UI_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cad.settings import ClientSettings


class ReviewUiSettings(ClientSettings):
    """The reviewer's web page: where it listens, which CAD server it talks to, and how."""

    model_config = SettingsConfigDict(env_prefix="CAD_REVIEW_UI_", extra="ignore")

    host: str = Field("127.0.0.1", description="HTTP bind address of the review page.")
    port: int = Field(
        8080, ge=0, le=65535, description="HTTP port of the review page; 0 picks one."
    )
    tls_client_cert: Path | None = Field(
        None, description="Client certificate for a server that requires mutual TLS."
    )
    tls_client_key: Path | None = Field(None, description="Key of the client certificate.")
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) of the page itself: serve HTTPS."
    )
    tls_key_file: Path | None = Field(
        None, description="PEM private key of the page's certificate."
    )
    secure_cookies: bool | None = Field(
        None, description="Mark cookies Secure; unset: on when the page serves HTTPS."
    )
    store_url: str | None = Field(
        None,
        description="Label store (the CAD server's CAD_STORE_URL) that keeps sign-ins, so that "
        "several replicas serve the page behind a load balancer; unset: in this process's memory "
        "(run one replica).",
    )
    session_idle_s: float = Field(
        1800.0, gt=0, description="A sign-in ends after this long without a request."
    )
    session_max_s: float = Field(
        43200.0, gt=0, description="A sign-in ends this long after it began, active or not."
    )
    rpc_timeout_s: float = Field(
        15.0, gt=0, description="Longest the page waits for one call to the CAD server."
    )
    queue_max: int = Field(
        200, ge=1, le=10000, description="Most queue items a reviewer may ask for at once."
    )

"""One logging setup for every process of the product (server, review page, trainer, CLI)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr at ``level`` (a name: DEBUG, INFO, WARNING, ...) in the one format."""
    logging.basicConfig(level=level.upper(), format=FORMAT)

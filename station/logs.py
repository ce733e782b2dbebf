"""Logging for every face of the station: records to stderr and, given a data dir, to a rotating
file there (logs/station.log), which staff can send along with a problem report."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_FILE_BYTES = 2_000_000
LOG_FILES_KEPT = 5


def setup_logging(verbose: bool, data_dir: Path | None = None) -> logging.Formatter:
    """Root logging at INFO (DEBUG with verbose); wire detail from libraries only with verbose."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter = logging.Formatter(FORMAT)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        stream = logging.StreamHandler()
        stream.setFormatter(formatter)
        root.addHandler(stream)
    if not verbose:
        for name in ("httpx", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if data_dir is not None:
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            logs / "station.log",
            maxBytes=LOG_FILE_BYTES,
            backupCount=LOG_FILES_KEPT,
            encoding="utf-8",
        )
        rotating.setFormatter(formatter)
        root.addHandler(rotating)
    return formatter

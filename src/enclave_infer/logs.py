"""One log format for every process of a deployment: the host, uvicorn, and the enclave.

Used on both sides; holds no secrets (what is logged is the callers' business: the enclave logs only
versions, problem types, exception type names and public hashes). Text lines look like::

    2026-11-29T07:50:01.123Z INFO  host     enclave_infer.host: listening on http://127.0.0.1:8080

and ``json`` gives one object per line with the same fields (time, level, process, logger, message),
for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["LOG_FORMATS", "configure"]

LOG_FORMATS = ("text", "json")


class _Formatter(logging.Formatter):
    def __init__(self, process: str, style: str) -> None:
        super().__init__()
        self._process, self._json = process, style == "json"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if self._json:
            return json.dumps(
                {
                    "time": self.formatTime(record),
                    "level": record.levelname,
                    "process": self._process,
                    "logger": record.name,
                    "message": message,
                }
            )
        return f"{self.formatTime(record)} {record.levelname:<7} {self._process:<8} {record.name}: {message}"


def configure(process: str, style: str = "text", *, level: int = logging.INFO) -> None:
    """Send every logger's records (uvicorn's included) to stderr in one format."""
    if style not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(process, style))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

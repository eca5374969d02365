"""Logging set-up, done once by the command line. Library code only calls ``logging.getLogger(__name__)``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

__all__ = ["configure_logging", "JsonFormatter"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _standard = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in self._standard and not k.startswith("_")})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at DEBUG and dataset identifiers (patient data) at INFO: WARNING and above only. The
    # DICOM node also turns LOG_REQUEST_IDENTIFIERS/LOG_RESPONSE_IDENTIFIERS off as it starts (pynetdicom's documented
    # configuration module, ``pynetdicom._config``: dicom_node/scp/node.py), where identifiers are received.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    # alembic says "Context impl SQLiteImpl" and each revision it runs at INFO: commands report what they did.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))

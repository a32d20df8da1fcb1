"""JSON lines sink: one alert per line to stdout or a file (flushed, and fsynced for files)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TextIO

__all__ = ["JsonLinesSink"]


class JsonLinesSink:
    """Writes alerts as JSON lines; ``path`` ``-`` means stdout. Durable when ``write`` returns."""

    def __init__(self, path: str | Path = "-", fsync: bool = True):
        self.path = str(path)
        self._own = self.path != "-"
        if self._own:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = open(self.path, "a", encoding="utf-8") if self._own else sys.stdout  # noqa: SIM115
        self.fsync = fsync and self._own

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        self._fh.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._own:
            self._fh.close()

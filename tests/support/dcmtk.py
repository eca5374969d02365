"""dcmtk's echoscu and storescu as real peers of the node (run with TCP_NODELAY=1, as dcmtk is slow without it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = ["echoscu", "storescu", "storescu_command", "StorescuResult", "STORESCU_PROPOSAL", "dcmtk_env"]

# The storescu option that proposes exactly one transfer syntax (the files must already be encoded in it).
STORESCU_PROPOSAL = {
    ImplicitVRLittleEndian: "-xi",
    ExplicitVRLittleEndian: "-xe",
    ExplicitVRBigEndian: "-xb",
    DeflatedExplicitVRLittleEndian: "-xd",
    JPEGBaseline8Bit: "-xy",
    JPEGExtended12Bit: "-xx",
    JPEGLosslessSV1: "-xs",
    JPEGLSLossless: "-xt",
    JPEGLSNearLossless: "-xu",
    JPEG2000Lossless: "-xv",
    JPEG2000: "-xw",
    RLELossless: "-xr",
}

_SENDING = re.compile(r"Sending file: (?P<path>.+)$")
_RESPONSE = re.compile(r"Received Store Response \((?P<status>[^)]*)\)")


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} (dcmtk) is not installed: scripts/test installs it")
    return path


@dataclass(frozen=True)
class StorescuResult:
    returncode: int
    output: str

    def responses(self) -> dict[Path, str]:
        """The store response storescu reported for each file it sent (needs ``-v``), e.g. ``Success``."""
        answers: dict[Path, str] = {}
        current: Path | None = None
        for line in self.output.splitlines():
            if match := _SENDING.search(line):
                current = Path(match["path"].strip())
            elif (match := _RESPONSE.search(line)) and current is not None:
                answers[current] = match["status"]
                current = None
        return answers


def echoscu(port: int, *, calling_ae: str = "ECHOSCU", called_ae: str = "M3EDGE", host: str = "127.0.0.1",
            timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("echoscu"), "-aet", calling_ae, "-aec", called_ae, host, str(port)],
        capture_output=True, text=True, timeout=timeout, env=dcmtk_env(),
    )


def storescu_command(port: int, files: Sequence[Path], *, calling_ae: str = "STORESCU", called_ae: str = "M3EDGE",
                     host: str = "127.0.0.1", proposal: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    command = [_tool("storescu"), "-v", "-aet", calling_ae, "-aec", called_ae]
    if proposal is not None:
        command.append(STORESCU_PROPOSAL[proposal])
    command += [*extra, host, str(port), *map(str, files)]
    return command


def storescu(port: int, files: Sequence[Path], *, timeout: float = 120, **options) -> StorescuResult:
    """Send ``files`` over one association; storescu's output (stdout and stderr) is kept for ``responses()``."""
    completed = subprocess.run(
        storescu_command(port, files, **options), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout, env=dcmtk_env(),
    )
    return StorescuResult(completed.returncode, completed.stdout)

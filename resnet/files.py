"""Reading and writing the files that travel from training to the app.

Writes are atomic (a temp file in the same folder, then a rename), so a reader
never sees half a file and an interrupted export leaves the previous one
intact. ``read_json`` is the one reader of JSON assets: every caller gets the
same two outcomes, a missing file or an unreadable one, each with a sentence.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class AssetError(ValueError):
    """A JSON asset is missing or unreadable; ``missing`` tells which."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide assets from a web server's user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path | str) -> dict[str, Any]:
    """The JSON object in ``path``; ``AssetError`` (with ``missing``) when there is none to read."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"`{path.name}` is not available in this build ({path}).", missing=True)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AssetError(f"`{path.name}` is not readable JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise AssetError(f"`{path.name}` does not hold a JSON object.")
    return data

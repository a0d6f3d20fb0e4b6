"""Files dealsync writes for a user: readable by that user only (README, "What dealsync stores
and sends"). The state store makes its own files the same way (sync/state/sqlite.py)."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as 0600 from its first byte (never readable by others, even
    for a moment); a folder made for it is 0700, an existing file is tightened."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode applies only to a new file

"""Files that are never half-written: one temporary-name-then-rename for every writer."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """Where :func:`replacing` writes ``path`` first: hidden, beside it, named by this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.part")


@contextmanager
def replacing(path: str | Path):
    """Yield a temporary name beside ``path``; on success rename it to ``path``, on any failure
    (a full disk, a kill signal turned exception) remove it: no final name ever holds a part file."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

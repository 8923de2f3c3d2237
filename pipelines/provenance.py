"""What produced a file: package versions, stored next to results."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("cellfeat", "numpy", "pandas", "scikit-image", "scikit-learn", "lightgbm", "numba", "torch", "cellpose", "pyarrow")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out

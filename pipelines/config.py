"""Read TOML configs from configs/ (or a user's file) and merge them over the defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT = CONFIG_DIR / "rxrx1.toml"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """The default config (configs/rxrx1.toml), with the keys of ``path`` merged over it."""
    if not DEFAULT.is_file():
        raise FileNotFoundError(
            f"default config {DEFAULT} is missing: cellfeat must be installed from its source tree "
            f"(pip install -e .)"
        )
    config = tomllib.loads(DEFAULT.read_text())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            config = _merge(config, tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc
    return config


def with_device(config: dict[str, Any], device: str | None) -> dict[str, Any]:
    """``config`` with the device of every GPU-capable stage (``[segment.cellpose] device``,
    ``[embed] device``) set to ``device`` (the ``--device`` option); unchanged for ``None``."""
    if device is None:
        return config
    return _merge(config, {"segment": {"cellpose": {"device": device}}, "embed": {"device": device}})

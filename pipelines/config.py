"""Read TOML configs: the generic defaults, RxRx1's values where the input is RxRx1, the user's file.

Defaults live in code, once: the typed settings (:mod:`pipelines.settings`) and the classes they
build (``NucleiParams``, ``EmbedConfig``, ``PlateNormalizer``, ``SirnaClassifier``) hold them, so
an input read from a LoadData CSV gets generic defaults and nothing of RxRx1's. RxRx1's own values
(its six channels and their colours, the cytoplasm channels, HepG2's segmentation, Cellpose
diameters per cell type) are in ``configs/rxrx1.toml``, applied when the input is RxRx1's folders
(``--data-root``) or when a command works on RxRx1 tables (``fit``). ``--config FILE`` is merged
over that: a key it sets wins, tables merge key by key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from cellfeat.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
RXRX1 = CONFIG_DIR / "rxrx1.toml"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give the path of a TOML file (see configs/)")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load_config(path: str | Path | None = None, *, rxrx1: bool = False) -> dict[str, Any]:
    """The config a run uses: the keys of ``configs/rxrx1.toml`` where ``rxrx1`` (the input is
    RxRx1's), with those of ``path`` merged over them; ``{}`` (every default) without either."""
    config: dict[str, Any] = {}
    if rxrx1:
        if not RXRX1.is_file():
            raise ConfigError(f"RxRx1's config {RXRX1} is missing: cellfeat must be installed from its source tree "
                              "(pip install -e .)")  # fmt: skip
        config = read_toml(RXRX1)
    if path is not None:
        config = _merge(config, read_toml(path))
    return config


def with_device(config: dict[str, Any], device: str | None) -> dict[str, Any]:
    """``config`` with the device of every GPU-capable stage (``[segment.cellpose] device``,
    ``[embed] device``) set to ``device`` (the ``--device`` option); unchanged for ``None``."""
    if device is None:
        return config
    return _merge(config, {"segment": {"cellpose": {"device": device}}, "embed": {"device": device}})

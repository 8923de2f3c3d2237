"""``cellfeat show``: one site as an RGB composite PNG."""

from __future__ import annotations

import logging

from cellfeat.images import composite, load_site, save_png
from cellfeat.layout import SiteKey, read_metadata, require_well, site_files
from pipelines.config import load_config

log = logging.getLogger(__name__)


def run(args) -> int:
    config = load_config(args.config)
    key = SiteKey(args.experiment, args.plate, args.well, args.site)
    if args.metadata:
        require_well(read_metadata(args.metadata), key.experiment, key.plate, key.well)
    site = load_site(site_files(args.data_root, key, config["channels"]["order"]))
    rgb = composite(site, config["channels"]["colors"], percentiles=tuple(config["composite"]["percentiles"]))
    out = save_png(rgb, args.out)
    log.info("wrote %s (%dx%d composite of %s)", out, rgb.shape[1], rgb.shape[0], key)
    return 0

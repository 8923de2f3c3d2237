"""``cellfeat show``: one site as an RGB composite PNG."""

from __future__ import annotations

import logging

from cellfeat.images import composite, load_site, save_png
from pipelines.config import load_config
from pipelines.inputs import open_input
from pipelines.settings import parse_settings

log = logging.getLogger(__name__)


def run(args) -> int:
    config = load_config(args.config, rxrx1=bool(args.data_root))
    sites = open_input(config=config, data_root=args.data_root, load_data=args.load_data, metadata=args.metadata,
                       experiment=args.experiment, plates=[args.plate], need_metadata=False)  # fmt: skip
    record = sites.select(well=args.well, site=args.site).sites[0]
    channels = parse_settings(config, sites.channels).channels
    rgb = composite(load_site(record.paths(channels.names)), channels.colors, percentiles=channels.percentiles)
    out = save_png(rgb, args.out)
    log.info("wrote %s (%dx%d composite of %s, channels %s)", out, rgb.shape[1], rgb.shape[0], record.key,
             ", ".join(channels.names))  # fmt: skip
    return 0

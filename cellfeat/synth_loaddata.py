"""The synthetic dataset in CellProfiler's LoadData form: what a Cell Painting Gallery / JUMP
plate looks like to a user, so that ``--load-data`` runs on an embedded default and in CI.

The same rendered sites as the Kaggle layout (:func:`cellfeat.synth.plate_sites`), written as
5 named Cell Painting channels, 16-bit TIFF, one file a channel, ``--sites`` fields a well::

    images/{experiment}/P{plate}/{well}_f{field:02d}_{channel}.tiff
    load_data.csv   FileName_{DNA,ER,RNA,AGP,Mito}, PathName_* (relative to the CSV),
                    Metadata_Experiment, Metadata_Plate (P1..), Metadata_Well, Metadata_Field
    platemap.csv    Metadata_Experiment, Metadata_Plate, Metadata_Well, Metadata_CellType,
                    Metadata_WellType, Metadata_Sirna (test treatments blank): for --metadata

Channels from the six RxRx1-like stains: DNA = Hoechst (w1), ER = ConA (w2), RNA = SYTO14 (w4),
AGP = the mean of phalloidin (w3) and WGA (w6) (actin, Golgi, plasma membrane share one channel
in Cell Painting), Mito = MitoTracker (w5). 8-bit values v become 257 v (the same intensity on
CellProfiler's [0, 1] scale); AGP's mean keeps its half steps in the 16 bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from cellfeat.files import replacing

CHANNELS = {"DNA": (0,), "ER": (1,), "RNA": (3,), "AGP": (2, 5), "Mito": (4,)}


def plate_name(plate: int) -> str:
    return f"P{plate}"


def _folder(experiment: str, plate: int) -> str:
    return f"images/{experiment}/{plate_name(plate)}"


def _file(well: str, field: int, channel: str) -> str:
    return f"{well}_f{field:02d}_{channel}.tiff"


def to_channels(image: np.ndarray) -> dict[str, np.ndarray]:
    """A ``(6, H, W)`` uint8 synthetic site as the 5 Cell Painting channels, uint16."""
    out = {}
    for name, planes in CHANNELS.items():
        mean = np.mean([image[p].astype(np.float64) for p in planes], axis=0)
        out[name] = np.rint(mean * 257.0).astype(np.uint16)
    return out


def write_plate_tiffs(spec, wells: pd.DataFrame, effects: pd.DataFrame, out: Path) -> int:
    """Render and write one plate's sites as 16-bit TIFF channels; returns the cells drawn."""
    from cellfeat.synth import plate_sites

    first = wells.iloc[0]
    folder = Path(out) / _folder(first["experiment"], int(first["plate"]))
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for row, field, drawn in plate_sites(spec, wells, effects):
        total += drawn.n_cells
        for name, plane in to_channels(drawn.image).items():
            path = folder / _file(row.well, field, name)
            with replacing(path) as tmp:
                tifffile.imwrite(tmp, plane, photometric="minisblack")
    return total


def write_loaddata(spec, wells: pd.DataFrame, out: Path) -> None:
    """``load_data.csv`` (one row a field) and ``platemap.csv`` (one row a well) under ``out``."""
    from cellfeat.layout import cell_type_of

    rows = []
    for w in wells.itertuples():
        for field in range(1, spec.sites + 1):
            row = {}
            for name in CHANNELS:
                row[f"FileName_{name}"] = _file(w.well, field, name)
                row[f"PathName_{name}"] = _folder(w.experiment, int(w.plate))
            row.update({"Metadata_Experiment": w.experiment, "Metadata_Plate": plate_name(int(w.plate)),
                        "Metadata_Well": w.well, "Metadata_Field": field})  # fmt: skip
            rows.append(row)
    pd.DataFrame(rows).to_csv(Path(out) / "load_data.csv", index=False)
    labelled = wells["dataset"].eq("train") | wells["well_type"].ne("treatment")
    platemap = pd.DataFrame({
        "Metadata_Experiment": wells["experiment"], "Metadata_Plate": wells["plate"].map(plate_name),
        "Metadata_Well": wells["well"], "Metadata_CellType": wells["experiment"].map(cell_type_of),
        "Metadata_Dataset": wells["dataset"], "Metadata_WellType": wells["well_type"],
        "Metadata_Sirna": wells["sirna"].where(labelled).astype("Int64"),
    })  # fmt: skip
    platemap.to_csv(Path(out) / "platemap.csv", index=False)

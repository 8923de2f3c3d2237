"""CellProfiler's LoadData CSV as input (issue 16): the adapter, and extract/segment/show/report on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellfeat.layout import InputError, read_loaddata
from cellfeat.synth import SynthSpec, generate
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]
FAST = """
[features]
families = ["AreaShape", "Intensity", "Correlation"]
[extract]
chunk_wells = 2
embed = false
"""


def _csv(folder: Path, rows: list[dict]) -> Path:
    path = folder / "load_data.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _tiff(path: Path, value: int = 1000, shape=(32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full(shape, value, np.uint16))


def test_channels_keys_paths_and_metadata_come_from_the_csv(tmp_path):
    for well, field in (("A01", 1), ("A01", 2), ("B03", 1)):
        for ch in ("OrigDNA", "OrigER"):
            _tiff(tmp_path / "imgs" / f"{well}_{field}_{ch}.tif")
    rows = [{"FileName_OrigDNA": f"{w}_{f}_OrigDNA.tif", "PathName_OrigDNA": "imgs",
             "FileName_OrigER": f"{w}_{f}_OrigER.tif", "PathName_OrigER": str(tmp_path / "imgs"),  # relative and absolute
             "Metadata_Plate": "BR00117010", "Metadata_Well": w, "Metadata_Field": f, "Metadata_Compound": c,
             "Metadata_ImageNumber": i}  # fmt: skip
            for i, (w, f, c) in enumerate((("A01", 1, "DMSO"), ("A01", 2, "DMSO"), ("B03", 1, "taxol")))]
    sites = read_loaddata(_csv(tmp_path, rows))
    assert sites.channels == ("OrigDNA", "OrigER") and len(sites) == 3
    first = sites.sites[0]
    assert (first.key.experiment, first.key.plate, first.key.well, first.key.site) == ("load_data", "BR00117010", "A01", 1)
    assert all(p.is_file() for s in sites.sites for p in s.paths(sites.channels))
    assert sites.wells.Metadata_Compound.tolist() == ["DMSO", "taxol"]
    assert "Metadata_ImageNumber" not in sites.wells.columns  # differs between a well's sites: not a well's metadata
    assert read_loaddata(tmp_path / "load_data.csv", experiment="Batch1").experiments == ["Batch1"]

    platemap = tmp_path / "platemap.csv"
    pd.DataFrame({"Metadata_Plate": ["BR00117010"] * 2, "Metadata_Well": ["A01", "B03"], "Metadata_MoA": ["none", "tubulin"],
                  "Metadata_Compound": ["DMSO-x", "taxol-x"]}).to_csv(platemap, index=False)  # fmt: skip
    joined = read_loaddata(tmp_path / "load_data.csv", metadata=platemap).wells
    assert joined.Metadata_MoA.tolist() == ["none", "tubulin"] and joined.Metadata_Compound.tolist() == ["DMSO-x", "taxol-x"]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.drop(columns="Metadata_Well"), "lacks column(s) ['Metadata_Well']"),
    (lambda t: t.drop(columns=["Metadata_Field"]), "Metadata_Field may stand for Metadata_Site"),
    (lambda t: t.drop(columns=[c for c in t.columns if c.startswith("FileName_")]), "not a LoadData CSV"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "listed twice"),
    (lambda t: t.assign(Metadata_Field=["x"] + list(t.Metadata_Field[1:])), "Metadata_Field must be a whole number"),
    (lambda t: t.assign(URL_DNA="s3://bucket/x.tif"), "not supported"),
])  # fmt: skip
def test_a_bad_loaddata_csv_is_a_clear_error(tmp_path, edit, message):
    rows = [{"FileName_DNA": f"{w}.tif", "PathName_DNA": ".", "Metadata_Plate": "P1", "Metadata_Well": w, "Metadata_Field": 1}
            for w in ("A01", "A02")]  # fmt: skip
    path = _csv(tmp_path, rows)
    edit(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(InputError, match="load_data.csv") as err:
        read_loaddata(path)
    assert message in str(err.value)


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory):
    """The same synthetic sites written in RxRx1's Kaggle layout and as a LoadData set."""
    root = tmp_path_factory.mktemp("loaddata")
    spec = SynthSpec(train_experiments=("U2OS-01",), test_experiments=(), treatments_per_plate=3, positive_controls=1,
                     sites=3, image_size=96, plates=(1,))  # fmt: skip
    generate(spec, root / "kaggle")
    generate(spec, root / "ld", layout="loaddata")
    config = root / "cellpainting-fast.toml"
    config.write_text((REPO / "configs" / "cellpainting.toml").read_text() + FAST)
    (root / "fast.toml").write_text(FAST)
    assert main(["extract", "--load-data", str(root / "ld" / "load_data.csv"), "--metadata", str(root / "ld" / "platemap.csv"),
                 "--config", str(config), "--out", str(root / "ld-out"), "--segmenter", "classical"]) == 0  # fmt: skip
    assert main(["extract", "--data-root", str(root / "kaggle"), "--metadata", str(root / "kaggle"), "--experiment", "U2OS-01",
                 "--config", str(root / "fast.toml"), "--out", str(root / "kaggle-out"), "--segmenter", "classical"]) == 0  # fmt: skip
    return root


def test_extract_names_columns_after_the_csv_channels_and_carries_the_plate_map(both_layouts):
    wells = pd.read_parquet(both_layouts / "ld-out" / "wells" / "U2OS-01.parquet")
    assert {"Nuclei_Intensity_MeanIntensity_DNA", "Cells_Intensity_MeanIntensity_Mito", "Cells_Correlation_Costes_DNA_ER_1",
            "Cytoplasm_Correlation_Correlation_RNA_AGP"} <= set(wells.columns)  # fmt: skip
    assert not [c for c in wells.columns if c.endswith("_w1")]
    assert set(wells.Metadata_Plate) == {"P1"} and len(wells) == 5
    assert set(wells.Metadata_WellType) == {"treatment", "positive_control", "negative_control"}
    assert (wells.Metadata_CellType == "U2OS").all() and wells.Metadata_CellCount.gt(0).all()
    sites = pd.read_parquet(both_layouts / "ld-out" / "sites" / "U2OS-01.parquet")
    assert sorted(sites.Metadata_Site.unique()) == [1, 2, 3]  # Metadata_Field


def test_the_same_sites_give_the_same_nuclei_whichever_layout_they_are_read_from(both_layouts):
    """DNA (16-bit TIFF, 257 v) is w1 (8-bit PNG, v) on CellProfiler's scale: the nuclei, their
    shape and their DNA intensity are the same numbers; only the cell channels differ by design."""
    ld = pd.read_parquet(both_layouts / "ld-out" / "cells" / "U2OS-01" / "PlateP1.parquet")
    kg = pd.read_parquet(both_layouts / "kaggle-out" / "cells" / "U2OS-01" / "Plate1.parquet")
    keys = ["Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]
    ld, kg = ld.sort_values(keys).reset_index(drop=True), kg.sort_values(keys).reset_index(drop=True)
    assert len(ld) == len(kg) > 0 and (ld[keys].to_numpy() == kg[keys].to_numpy()).all()
    for column in ("Nuclei_AreaShape_Area", "Nuclei_AreaShape_Eccentricity", "Nuclei_Intensity_MeanIntensity_{}",
                   "Nuclei_Intensity_IntegratedIntensity_{}"):  # fmt: skip
        np.testing.assert_allclose(ld[column.format("DNA")], kg[column.format("w1")], rtol=1e-6, err_msg=column)


def test_segment_show_and_report_read_the_same_input(both_layouts, tmp_path):
    csv = both_layouts / "ld" / "load_data.csv"
    config = both_layouts / "cellpainting-fast.toml"
    assert main(["segment", "--load-data", str(csv), "--config", str(config), "--plate", "P1", "--well", "B02",
                 "--out", str(tmp_path / "seg"), "--segmenter", "classical", "--overlay"]) == 0  # fmt: skip
    labels = sorted((tmp_path / "seg" / "U2OS-01" / "PlateP1").glob("B02_s*_labels.npz"))
    assert len(labels) == 3 and np.load(labels[0])["nuclei"].max() > 0
    assert main(["show", "--load-data", str(csv), "--config", str(config), "--plate", "P1", "--well", "B02", "--site", "2",
                 "--out", str(tmp_path / "site.png")]) == 0  # fmt: skip
    assert (tmp_path / "site.png").stat().st_size > 1000
    page = tmp_path / "report" / "index.html"
    assert main(["report", "--out", str(both_layouts / "ld-out"), "--html", str(page)]) == 0
    assert "sites_1.png" in page.read_text()  # the sample site found through the tables' provenance


def test_a_config_naming_a_channel_the_csv_lacks_is_a_clear_error(both_layouts, tmp_path, caplog):
    csv = both_layouts / "ld" / "load_data.csv"
    (tmp_path / "hoechst.toml").write_text('[channels]\nnuclei = "Hoechst"\n')
    argv = ["extract", "--load-data", str(csv), "--config", str(tmp_path / "hoechst.toml"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "[channels] nuclei" in caplog.text and "'DNA', 'ER', 'RNA', 'AGP', 'Mito'" in caplog.text


def test_a_loaddata_set_gets_generic_defaults_not_rxrx1s(both_layouts, tmp_path):
    """No RxRx1 value reaches a LoadData set: no per-cell-type segmentation tables, no RxRx1 channel
    numbers; nuclei in the first channel, cells grown over every other one. RxRx1's input still gets them."""
    from pipelines.config import load_config
    from pipelines.settings import parse_settings, rxrx1_settings
    from pipelines.tables import read_provenance

    channels = read_loaddata(both_layouts / "ld" / "load_data.csv").channels
    generic = parse_settings(load_config(), channels)
    assert set(generic.segment.classical) == {""}  # no HEPG2 table
    assert generic.segment.cellpose.diameters == {}
    assert generic.channels.nuclei == "DNA" and generic.segment.cell_channels == (1, 2, 3, 4)
    rxrx1 = rxrx1_settings(load_config(rxrx1=True))
    assert "HEPG2" in rxrx1.segment.classical and rxrx1.segment.cell_channels == (1, 2, 5)
    assert rxrx1.segment.classical["HEPG2"].nuclei.diameter == 15.0 and rxrx1.segment.classical[""].nuclei.diameter == 24.0

    csv = both_layouts / "ld" / "load_data.csv"
    out = tmp_path / "o"
    assert main(["extract", "--load-data", str(csv), "--out", str(out), "--no-embed", "--segmenter", "classical"]) == 0
    provenance = read_provenance(out / "wells" / "U2OS-01.parquet")
    assert "order" not in provenance["config"].get("channels", {})
    assert "HEPG2" not in provenance["config"].get("segment", {}).get("classical", {})


def test_segmenter_defaults_are_stated_once():
    """The classical segmenter's defaults live in NucleiParams/CellParams; the functions refer to them."""
    import inspect
    from dataclasses import fields

    from cellfeat.segment.classical import CellParams, NucleiParams, segment_cells, segment_nuclei

    for cls, function in ((NucleiParams, segment_nuclei), (CellParams, segment_cells)):
        parameters = inspect.signature(function).parameters
        for f in fields(cls):
            if f.name in parameters:
                assert parameters[f.name].default == f.default, (cls.__name__, f.name)
    import tomllib

    rxrx1 = tomllib.loads((REPO / "configs" / "rxrx1.toml").read_text())
    assert not {"nuclei", "cells"} & set(rxrx1["segment"]["classical"])  # only what differs: HepG2's table


def _seven_channels(both_layouts: Path, folder: Path) -> tuple[Path, Path]:
    """The LoadData set with two more channels (copies of DNA and Mito under new names), and a
    config that gives all seven a colour."""
    table = pd.read_csv(both_layouts / "ld" / "load_data.csv")
    for path in [c for c in table.columns if c.startswith("PathName_")]:  # relative to the CSV's folder
        table[path] = [str(both_layouts / "ld" / p) for p in table[path]]
    for new, old in (("Brightfield", "DNA"), ("Extra", "Mito")):
        table[f"FileName_{new}"], table[f"PathName_{new}"] = table[f"FileName_{old}"], table[f"PathName_{old}"]
    csv = folder / "load_data_7.csv"
    table.to_csv(csv, index=False)
    config = folder / "seven.toml"
    config.write_text(FAST.replace("embed = false", "embed = true") + """
[channels]
use = ["DNA", "ER", "RNA", "AGP", "Mito", "Brightfield", "Extra"]
nuclei = "DNA"
colors = [[0, 0, 255], [0, 255, 0], [0, 255, 255], [255, 0, 0], [255, 0, 255], [128, 128, 128], [255, 128, 0]]
[segment.classical]
cell_channels = ["ER", "AGP"]
[embed]
crop_size = 32
""")
    return csv, config


def test_extract_embeds_a_seven_channel_loaddata_set_with_its_configured_colours(both_layouts, tmp_path):
    """More channels than RxRx1's six: every channel gets the config's colour (this failed while the
    embedder took RxRx1's six colours whatever the config said)."""
    csv, config = _seven_channels(both_layouts, tmp_path)
    assert main(["extract", "--load-data", str(csv), "--metadata", str(both_layouts / "ld" / "platemap.csv"), "--config",
                 str(config), "--out", str(tmp_path / "o"), "--segmenter", "classical"]) == 0  # fmt: skip
    cells = pd.read_parquet(tmp_path / "o" / "cells" / "U2OS-01" / "PlateP1.parquet")
    embedding = cells.filter(like="Embedding_EfficientNetLite0_")
    assert embedding.shape[1] > 100 and len(cells) > 0 and np.isfinite(embedding.to_numpy()).all()
    assert "Cells_Intensity_MeanIntensity_Extra" in cells.columns


def test_the_embedder_of_a_five_channel_set_mixes_its_channels_with_the_config_colours(both_layouts):
    """configs/cellpainting.toml gives RNA cyan; RxRx1's third colour (phalloidin red) must not leak in."""
    import torch

    from cellfeat import embed as E
    from pipelines import extract_unit
    from pipelines.config import load_config
    from pipelines.extract_unit import Context
    from pipelines.settings import parse_settings

    config = load_config(REPO / "configs" / "cellpainting.toml")
    settings = parse_settings(config, read_loaddata(both_layouts / "ld" / "load_data.csv").channels)
    assert settings.channels.names == ("DNA", "ER", "RNA", "AGP", "Mito")
    extract_unit._STATE.clear()
    _, used = extract_unit._embedder(Context(settings=settings, segmenter="classical", embed=True, skip_bad=False, provenance={}))
    crops = np.random.default_rng(0).normal(size=(4, 5, 32, 32)).astype(np.float32)
    torch.manual_seed(0)
    wanted = E.Embedder(E.build_backbone(n_channels=5, colors=config["channels"]["colors"]), name="x", device="cpu")
    rxrx1 = E.Embedder(E.build_backbone(n_channels=5, colors=E.RXRX1_COLORS), name="x", device="cpu")
    np.testing.assert_allclose(used.embed(crops), wanted.embed(crops), rtol=1e-5, atol=1e-6)
    assert not np.allclose(used.embed(crops), rxrx1.embed(crops), rtol=1e-3, atol=1e-4)

"""Site loading and composites, on the 14 real RxRx1 sites and on broken copies of them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellfeat.images import ImageError, composite, load_site, read_image


def test_every_real_site_loads(real_sites):
    assert len(real_sites) == 14
    for key, paths in real_sites:
        site = load_site(paths)
        assert site.shape == (6, 512, 512), key
        assert site.dtype == np.float32
        assert 0.0 <= site.min() and site.max() <= 1.0
        assert (site.reshape(6, -1).std(axis=1) > 0).all(), f"{key}: a blank channel"


def _copy_site(paths, tmp_path):
    folder = tmp_path / "Plate1"
    folder.mkdir()
    return [shutil.copy(p, folder / p.name) for p in paths]


def test_missing_channel_names_the_file_and_what_exists(real_sites, tmp_path):
    paths = _copy_site(real_sites[0][1], tmp_path)
    (tmp_path / "Plate1" / "B02_s1_w4.png").unlink()
    with pytest.raises(ImageError) as err:
        load_site(paths)
    msg = str(err.value)
    assert "B02_s1_w4.png" in msg and "B02_s1_w6.png" in msg and "--skip-bad" in msg


def test_truncated_channel_names_the_file(real_sites, tmp_path):
    paths = _copy_site(real_sites[0][1], tmp_path)
    data = paths[2].read_bytes() if hasattr(paths[2], "read_bytes") else open(paths[2], "rb").read()
    with open(paths[2], "wb") as f:
        f.write(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"B02_s1_w3\.png.*corrupt or truncated"):
        load_site(paths)


def test_channels_of_different_shapes(tmp_path):
    a, b = tmp_path / "A01_s1_w1.png", tmp_path / "A01_s1_w2.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(a)
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(b)
    with pytest.raises(ImageError, match=r"different shapes.*A01_s1_w2.png: \(8, 9\)"):
        load_site([a, b])


def test_bit_depths_and_tiff(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", np.full((4, 4), 32768, np.uint16))
    Image.fromarray(np.full((4, 4), 51, np.uint8)).save(tmp_path / "c.png")
    assert read_image(tmp_path / "a.png").max() == pytest.approx(1.0)
    assert read_image(tmp_path / "b.tif").max() == pytest.approx(32768 / 65535)
    assert read_image(tmp_path / "c.png").max() == pytest.approx(0.2)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageError, match="colour image"):
        read_image(tmp_path / "rgb.png")


def test_composite_is_coloured_and_not_blank(real_sites):
    rgb = composite(load_site(real_sites[0][1]))
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert rgb.std() > 20 and (rgb.reshape(-1, 3).mean(0) > 10).all()
    only_nuclei = np.zeros((6, 16, 16), np.float32)
    only_nuclei[0, 4:8, 4:8] = 1.0
    out = composite(only_nuclei)
    assert tuple(out[5, 5]) == (19, 0, 249)  # Hoechst drawn in RxRx1's blue
    assert out[0, 0].sum() == 0


@pytest.mark.parametrize("damage", ["zero-byte", "half", "header only"])
def test_a_damaged_tiff_is_named_never_a_bare_decoder_message(tmp_path, damage):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, (np.arange(64 * 64) % 65535).astype(np.uint16).reshape(64, 64))
    data = whole.read_bytes()
    victim = tmp_path / "B02_s1_w3.tif"
    victim.write_bytes({"zero-byte": b"", "half": data[: len(data) // 2], "header only": data[:100]}[damage])
    with pytest.raises(ImageError, match=r"B02_s1_w3\.tif.*(zero-byte|corrupt or truncated)"):
        read_image(victim)


def test_full_scale_is_the_files_bit_depth(tmp_path):
    """The grey-level scale CellProfiler divides by and searches Costes' thresholds on, from the header."""
    import tifffile
    from PIL import Image

    from cellfeat.images import full_scale, site_full_scale

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "b.png")
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((4, 4), np.uint8))
    tifffile.imwrite(tmp_path / "d.tif", np.zeros((4, 4), np.uint16))
    tifffile.imwrite(tmp_path / "e.tif", np.zeros((4, 4), np.float32))
    got = [full_scale(tmp_path / n) for n in ("a.png", "b.png", "c.tif", "d.tif", "e.tif")]
    assert got == [255, 65535, 255, 65535, 65535]
    assert site_full_scale([tmp_path / "a.png", tmp_path / "d.tif"]) == 65535
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        full_scale(tmp_path / "bad.png")

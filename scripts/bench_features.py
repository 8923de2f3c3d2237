"""Time the feature families against cp_measure on the real RxRx1 sites, one core.

For every family in ``cellfeat.features.registry.FAMILIES`` (a family whose module does not
import is reported "not available"), on each site: 3 compartments (Nuclei, Cells, Cytoplasm;
Neighbors on Nuclei and Cells) x 6 channels (15 channel pairs for PAIR families), ours
(numba, warm: the first call, i.e. compilation or cache load, is timed apart) and cp_measure's
equivalent functions on the same masks and pixels in the same process. Times are CPU seconds
of this process (``time.process_time``; every thread pool is pinned to one thread), so other
work on a shared machine inflates them less than wall-clock time would. Also reports the
largest relative error against cp_measure over the keys both produce, and the peak memory of
one site per family and implementation (each in a child process: peak RSS during the call over
the RSS just before it, after resetting the kernel's high-water mark). Ours is timed twice: call
by call as cp_measure is (the parity comparison's calls), and through ``measure_objects`` as
``cellfeat extract`` runs it ("via measure"), which shares work between compartments and
channels (Granularity's reconstructions, RadialDistribution's geometry); the speed-up in
parentheses is cp_measure's time over that one.

Masks come from ``cellfeat.segment.classical.segment_site`` when it is there, else from a
stand-in (Otsu on w1 + label; cells = nuclei expanded by 8 px).

    OMP_NUM_THREADS=1 python scripts/bench_features.py                 # all 14 sites, cp_measure's numba backend
    OMP_NUM_THREADS=1 python scripts/bench_features.py --cp-accelerator none   # against its numpy code
    python scripts/bench_features.py --sites 0 3 --cp-sites 1 --json out.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cellfeat.features.registry import FAMILIES, Inputs  # noqa: E402
from cellfeat.images import load_site  # noqa: E402
from cellfeat.layout import discover_sites, site_files, SiteKey  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "rxrx1" / "images"
CHANNELS = [f"w{c}" for c in range(1, 7)]
COMPARTMENTS = ("Nuclei", "Cells", "Cytoplasm")
CP_SOURCE = ""  # --cp-source: a cp_measure source tree to time instead of the installed one
NEIGHBOR_COMPARTMENTS = ("Nuclei", "Cells")


# --------------------------------------------------------------------------- inputs


def site_list(root: Path) -> list[tuple[str, list[Path]]]:
    table = discover_sites(root)
    out = []
    for r in table.itertuples():
        key = SiteKey(r.Metadata_Experiment, r.Metadata_Plate, r.Metadata_Well, r.Metadata_Site)
        out.append((str(key), site_files(root, key, [1, 2, 3, 4, 5, 6])))
    return out


def masks_for(pixels: np.ndarray) -> tuple[dict[str, np.ndarray], str]:
    try:
        from cellfeat.segment.classical import segment_site
    except ImportError:
        segment_site = None
    if segment_site is not None:
        seg = segment_site(pixels)
        return {"Nuclei": seg.nuclei, "Cells": seg.cells, "Cytoplasm": seg.cytoplasm}, "segment.classical"
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.segmentation import expand_labels

    nuclei = label(pixels[0] > threshold_otsu(pixels[0])).astype(np.int32)
    cells = expand_labels(nuclei, 8).astype(np.int32)
    return {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": np.where(nuclei > 0, 0, cells)}, "stand-in (Otsu + expand)"


# --------------------------------------------------------------------------- the two sides


def ours(name: str):
    """A callable (labels, pixels or None) -> dict, or None when the module is not there."""
    try:
        return FAMILIES[name].load()
    except ImportError:
        return None


def cp_branch_function(name: str):
    """The equivalent of one of our families from a cp_measure source tree whose numba backend
    is its package ``cp_measure.core.numba`` (the ``integration/all-numba`` branch, whose
    ``bulk`` module does not import): its numba function where it has one, its numpy one
    otherwise (sizeshape, neighbors), as its ``set_accelerator("numba")`` means to compose them."""
    import cp_measure.core.numba as nb

    if name == "AreaShape":
        from cp_measure.core.measureobjectsizeshape import get_sizeshape

        def areashape(labels, _):
            out = {f"AreaShape_{k}": v for k, v in get_sizeshape(labels, None).items()}
            for fn in (nb.get_zernike, nb.get_feret):
                out.update({f"AreaShape_{k}": v for k, v in fn(labels, None).items()})
            return out

        return areashape
    if name == "Neighbors":
        from cp_measure.multimask.measureobjectneighbors import measureobjectneighbors

        return lambda labels, _: measureobjectneighbors(labels, labels, "Adjacent")
    if name == "Correlation":

        def correlation(labels, pair):
            out = {}
            for fn in (nb.get_correlation_pearson, nb.get_correlation_manders_fold, nb.get_correlation_rwc, nb.get_correlation_overlap):
                out.update(fn(pixels_1=pair[0], pixels_2=pair[1], masks=labels))
            # its Costes takes the grid from the dtype (float: 1 level): the 8-bit levels as uint8 give 255
            levels = np.rint(pair * 255).astype(np.uint8)
            out.update(nb.get_correlation_costes(pixels_1=levels[0], pixels_2=levels[1], masks=labels))
            return out

        return correlation
    fn = {"Intensity": nb.get_intensity, "Texture": nb.get_texture, "Granularity": nb.get_granularity,
          "RadialDistribution": nb.get_radial_distribution}[name]  # fmt: skip
    return lambda labels, pixels: fn(labels, pixels)


def cp_function(name: str):
    """cp_measure's equivalent of one of our families: (labels, pixels or None) -> dict."""
    if CP_SOURCE:
        return cp_branch_function(name)
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    core = get_core_measurements()
    if name == "AreaShape":

        def areashape(labels, _):
            out = {}
            for key in ("sizeshape", "zernike", "feret"):
                out.update({f"AreaShape_{k}": v for k, v in core[key](labels, None).items()})
            return out

        return areashape
    if name == "Neighbors":
        from cp_measure.multimask.measureobjectneighbors import measureobjectneighbors

        return lambda labels, _: measureobjectneighbors(labels, labels, "Adjacent")
    if name == "Correlation":
        corr = get_correlation_measurements()

        def correlation(labels, pair):
            out = {}
            for key, fn in corr.items():
                # RxRx1 is 8-bit: Costes' threshold search runs over 255 grey levels
                extra = {"scale_max": 255} if key == "costes" else {}
                out.update(fn(pixels_1=pair[0], pixels_2=pair[1], masks=labels, **extra))
            return out

        return correlation
    # MeasureObjectIntensityDistribution is cp_measure's radial_distribution (its radial
    # Zernikes are a separate, optional group there and in CellProfiler)
    key = {"Intensity": "intensity", "Texture": "texture", "Granularity": "granularity",
           "RadialDistribution": "radial_distribution"}[name]  # fmt: skip
    return lambda labels, pixels: core[key](labels, pixels)


def calls(name: str, masks: dict[str, np.ndarray], pixels: np.ndarray, cp: bool):
    """Every (compartment, image, labels, input) one family measures on one site."""
    inputs = FAMILIES[name].inputs
    comps = NEIGHBOR_COMPARTMENTS if name == "Neighbors" else COMPARTMENTS
    for comp in comps:
        labels = masks[comp]
        if cp:  # cp_measure wants contiguous labels and float64 pixels
            labels = _contiguous(labels)
        if inputs is Inputs.OBJECTS:
            yield comp, "", labels, None
        elif inputs is Inputs.CHANNEL:
            for c, ch in enumerate(CHANNELS):
                plane = pixels[c].astype(np.float64) if cp else pixels[c]
                yield comp, ch, labels, plane
        else:
            for i, j in itertools.combinations(range(len(CHANNELS)), 2):
                # cp_measure gets CellProfiler's values, the 8-bit levels k / 255 in float64 (our
                # Correlation snaps float32-rounded levels back to them)
                pair = np.rint(pixels[[i, j]].astype(np.float64) * 255) / 255 if cp else pixels[[i, j]]
                yield comp, f"{CHANNELS[i]}_{CHANNELS[j]}", labels, pair


def _contiguous(labels: np.ndarray) -> np.ndarray:
    try:
        from cp_measure._sanitize import sanitize_masks
    except ImportError:  # a source tree without it (the all-numba branch)
        from skimage.segmentation import relabel_sequential

        return relabel_sequential(labels)[0]
    return sanitize_masks(labels)[0]


def run_family(fn, name, masks, pixels, cp) -> tuple[float, dict]:
    results = {}
    t0 = time.process_time()  # CPU time of this (single-threaded) process: robust to a busy machine
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for comp, image, labels, data in calls(name, masks, pixels, cp):
            results[(comp, image)] = fn(labels, data)
    return time.process_time() - t0, results


def run_orchestrated(names: str | list[str], masks: dict[str, np.ndarray], pixels: np.ndarray) -> float:
    """CPU seconds of one family (or several together) through ``measure_objects``, as
    ``cellfeat extract`` runs it: with what it shares between compartments and channels
    (Granularity's reconstructions, RadialDistribution's geometry, each compartment's layout),
    which the per-call timing cannot see."""
    from cellfeat.features.measure import measure_objects

    t0 = time.process_time()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        measure_objects(masks, pixels, CHANNELS, families=[names] if isinstance(names, str) else list(names))
    return time.process_time() - t0


def max_rel_error(masks, ours_res, cp_res) -> tuple[float, str, int, float]:
    """Largest |ours - cp| / |cp| over the values both give with |cp| > 1e-6 (NaN pairs agree),
    the key where it occurs, the number of keys compared, and the share of all values with
    |ours - cp| <= 1e-6 |cp| + 1e-9 (``numpy.isclose(rtol=1e-6, atol=1e-9)``)."""
    worst, worst_key, compared = 0.0, "", 0
    n_values = n_close = 0
    for (comp, image), ours_dict in ours_res.items():
        cp_dict = cp_res[(comp, image)]
        present = np.flatnonzero(np.bincount(masks[comp].ravel())[1:]) if masks[comp].any() else np.zeros(0, int)
        for key, values in ours_dict.items():
            cp_key = key.replace("_{image}", "")
            if cp_key not in cp_dict:  # cp_measure's texture keys carry no "Texture_" prefix
                cp_key = cp_key.split("_", 1)[1]
            if cp_key not in cp_dict:
                continue
            a = np.asarray(values, float)[present]
            b = np.asarray(cp_dict[cp_key], float)
            if a.shape != b.shape:
                continue
            agree = (np.isnan(a) & np.isnan(b)) | (np.isinf(b) & np.isnan(a))  # our NaN for cp's inf
            with np.errstate(all="ignore"):
                close = agree | (np.abs(a - b) <= 1e-6 * np.abs(b) + 1e-9)  # numpy.isclose's test
                # relative error where the reference is not zero up to round-off
                err = np.where(agree | (np.abs(b) <= 1e-6), 0.0, np.abs(a - b) / np.abs(b))
            n_values += err.size
            n_close += int(np.count_nonzero(close))
            top = float(np.nan_to_num(err, nan=np.inf).max()) if err.size else 0.0
            if top > worst:
                worst, worst_key = top, key
            compared += 1
    return worst, worst_key, compared, (n_close / n_values if n_values else float("nan"))


# --------------------------------------------------------------------------- memory (child)


def child_peak(name: str, impl: str, site: int) -> float:
    """Extra peak RSS (MiB) of one site of one family, measured in a fresh child process."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, impl, str(site)], capture_output=True, text=True, check=False
    )
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return float("nan")


def child_main(name: str, impl: str, site: int) -> None:
    sites = site_list(DATA)
    pixels = load_site(sites[site][1])
    masks, _ = masks_for(pixels)
    fn = ours(name) if impl == "ours" else cp_function(name)
    if impl == "ours":  # compile / load the cache on a tiny input first
        tiny = {k: v[:32, :32].copy() for k, v in masks.items()}
        run_family(fn, name, tiny, np.ascontiguousarray(pixels[:, :32, :32]), False)
    gc.collect()
    try:  # Linux: reset the peak (VmHWM) so that segmentation's peak does not hide ours
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        run_family(fn, name, masks, pixels, impl == "cp")
        print((_status_kib("VmHWM") - base) / 1024)
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_family(fn, name, masks, pixels, impl == "cp")
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


# --------------------------------------------------------------------------- main


def get_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, nargs="*", help="site indices (0-13); default all")
    p.add_argument("--cp-sites", type=int, default=2, help="run cp_measure on the first N of them (default 2)")
    p.add_argument("--families", nargs="*", default=list(FAMILIES), help="default: every registry family")
    p.add_argument("--no-memory", action="store_true", help="skip the per-family peak-memory children")
    p.add_argument("--cp-accelerator", choices=["numba", "none"], default="numba",
                   help="cp_measure's backend (cp_measure.set_accelerator): numba, its fastest warm, is the default "
                        "reference; none = its numpy code. Warmed by one untimed call on the first site")  # fmt: skip
    p.add_argument("--cp-source", type=Path,
                   help="time cp_measure from this source tree (its src/ folder or the folder holding cp_measure/) "
                        "instead of the installed release, its numba functions where it has them: e.g. the "
                        "integration/all-numba branch, `git archive integration/all-numba src | tar -x -C DIR`")  # fmt: skip
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = get_arg_parser().parse_args(argv)
    if args.child:
        child_main(args.child[0], args.child[1], int(args.child[2]))
        return 0
    global CP_SOURCE
    if args.cp_source:
        src = args.cp_source / "src" if (args.cp_source / "src" / "cp_measure").is_dir() else args.cp_source
        sys.path.insert(0, str(src.resolve()))
        CP_SOURCE = str(src)
    import cp_measure

    if CP_SOURCE:
        print(f"cp_measure from {Path(cp_measure.__file__).parent} (its numba functions where it has them)")
    else:
        cp_measure.set_accelerator(None if args.cp_accelerator == "none" else args.cp_accelerator)
    all_sites = site_list(DATA)
    chosen = args.sites if args.sites else list(range(len(all_sites)))
    loaded = []
    for i in chosen:
        pixels = load_site(all_sites[i][1])
        masks, how = masks_for(pixels)
        loaded.append((i, all_sites[i][0], pixels, masks))
    n_objects = [int(m["Cells"].max()) for *_, m in loaded]
    print(f"{len(loaded)} sites, masks by {how}, objects per site {min(n_objects)}..{max(n_objects)}; "
          f"cp_measure ({args.cp_accelerator} backend) on the first {min(args.cp_sites, len(loaded))}")  # fmt: skip
    rows = []
    for name in args.families:
        fn = ours(name)
        if fn is None:
            rows.append({"family": name, "available": False})
            print(f"{name:20s} not available ({FAMILIES[name].module} does not import)")
            continue
        first, _ = run_family(fn, name, loaded[0][3], loaded[0][2], False)  # compile or cache load
        ours_t, cp_t, errs, compared = [], [], [], 0
        worst_key = ""
        shares = []
        cp_fn = cp_function(name)
        if cp_fn is not None and args.cp_sites and args.cp_accelerator != "none":  # compile cp_measure's kernels, untimed
            try:
                run_family(cp_fn, name, loaded[0][3], loaded[0][2], True)
            except Exception:  # reported by the timed call below
                pass
        orchestrated = []
        for k, (_, _, pixels, masks) in enumerate(loaded):
            t, res = run_family(fn, name, masks, pixels, False)
            ours_t.append(t)
            orchestrated.append(run_orchestrated(name, masks, pixels))
            if k < args.cp_sites and cp_fn is not None:
                try:
                    t_cp, res_cp = run_family(cp_fn, name, masks, pixels, True)
                except Exception as exc:  # report and go on: one family must not stop the table
                    print(f"{name}: cp_measure failed ({type(exc).__name__}: {exc})")
                    cp_fn = None
                    continue
                cp_t.append(t_cp)
                err, key, compared, share = max_rel_error(masks, res, res_cp)
                if not errs or err > max(errs):
                    worst_key = key
                errs.append(err)
                shares.append(share)
        row = {
            "family": name,
            "available": True,
            "first_call_s": first,
            "ours_s_per_site": float(np.mean(ours_t)),
            "ours_s_per_site_on_cp_sites": float(np.mean(ours_t[: len(cp_t)])) if cp_t else None,
            "ours_measure_s_per_site": float(np.mean(orchestrated)),
            "ours_measure_s_per_site_on_cp_sites": float(np.mean(orchestrated[: len(cp_t)])) if cp_t else None,
            "cp_s_per_site": float(np.mean(cp_t)) if cp_t else None,
            "max_rel_err_vs_cp": float(max(errs)) if errs else None,
            "worst_key": worst_key,
            "share_within_1e-6": float(np.mean(shares)) if shares else None,
            "keys_compared": compared,
        }
        if cp_t:
            row["speedup"] = row["cp_s_per_site"] / row["ours_s_per_site_on_cp_sites"]
            row["speedup_measure"] = row["cp_s_per_site"] / row["ours_measure_s_per_site_on_cp_sites"]
        if not args.no_memory:
            row["ours_peak_mib"] = child_peak(name, "ours", chosen[0])
            row["cp_peak_mib"] = child_peak(name, "cp", chosen[0])
        rows.append(row)
        print(_format_row(row), flush=True)
    together = _together(rows, loaded, args.cp_sites)
    print()
    print(_table(rows))
    if together:
        print(together["line"])
    print(f"\nprocess peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"sites": [s for _, s, *_ in loaded], "masks": how, "families": rows, "together": together}, indent=2))
    return 0


def _together(rows: list[dict], loaded: list, cp_sites: int) -> dict | None:
    """The available families in one ``measure_objects`` call a site (as ``cellfeat extract``
    runs them, sharing each compartment's layout between families), against the sum of
    cp_measure's per-family times on the sites it ran on."""
    names = [r["family"] for r in rows if r["available"]]
    if len(names) < 2:
        return None
    times = [run_orchestrated(names, masks, pixels) for _, _, pixels, masks in loaded]
    out = {"families": names, "s_per_site": float(np.mean(times)), "per_site": times}
    line = f"together ({len(names)} families, one measure_objects call a site): {out['s_per_site']:.4f} s/site"
    cp = [r.get("cp_s_per_site") for r in rows if r["available"]]
    if all(cp) and cp_sites:
        ours_cp_sites = float(np.mean(times[:cp_sites]))
        out["cp_s_per_site"] = float(sum(cp))
        out["speedup"] = out["cp_s_per_site"] / ours_cp_sites
        line += f"; on the cp_measure sites {ours_cp_sites:.4f} vs cp_measure's families summed {out['cp_s_per_site']:.3f} ({out['speedup']:.1f}x)"
    out["line"] = line
    return out


def _format_row(r: dict) -> str:
    if not r["available"]:
        return f"{r['family']:20s} not available"
    cp = f"{r['cp_s_per_site']:.3f}" if r.get("cp_s_per_site") else "-"
    sp = f"{r['speedup']:.0f}x" if r.get("speedup") else "-"
    worst = f"  worst vs cp: {r['worst_key']} {r['max_rel_err_vs_cp']:.1e}" if r.get("worst_key") else ""
    via = f"  (through measure_objects {r['ours_measure_s_per_site']:.4f} s/site" + (
        f", {r['speedup_measure']:.0f}x)" if r.get("speedup_measure") else ")")
    return f"{r['family']:20s} ours {r['ours_s_per_site']:.4f} s/site  cp {cp} s/site  {sp}{via}{worst}"


def _table(rows: list[dict]) -> str:
    head = (f"{'family':20s} {'ours s/site':>11s} {'via measure':>11s} {'first call s':>12s} {'cp s/site':>10s} {'speed-up':>9s} "
            f"{'max rel err':>11s} {'<=1e-6':>8s} {'keys':>5s} {'ours MiB':>9s} {'cp MiB':>7s}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r["available"]:
            lines.append(f"{r['family']:20s} not available")
            continue

        def f(key, fmt):
            v = r.get(key)
            return format(v, fmt) if isinstance(v, (int, float)) and v is not None else "-"

        lines.append(
            f"{r['family']:20s} {f('ours_s_per_site', '11.4f')} {f('ours_measure_s_per_site', '11.4f')} {f('first_call_s', '12.2f')} "
            f"{f('cp_s_per_site', '10.3f')} {f('speedup', '8.0f')}x {f('max_rel_err_vs_cp', '11.1e')} "
            f"{f('share_within_1e-6', '8.5f')} "
            f"{f('keys_compared', '5d')} {f('ours_peak_mib', '9.1f')} {f('cp_peak_mib', '7.1f')}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

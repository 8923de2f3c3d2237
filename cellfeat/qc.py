"""Quality-control figures of sites, plates and well profiles: data in, matplotlib Figures out.

Every function takes plain arrays or DataFrames (the per-well table ``cellfeat extract``
writes, a fit report as a dict) and returns a :class:`matplotlib.figure.Figure`; nothing is
read or written here (``pipelines/report.py`` does that). Figures are built without pyplot,
so there is no global figure state and no GUI backend: ``fig.savefig("x.png")`` renders with
Agg.

Plates are drawn as RxRx1's 384-well grid: rows A..P top to bottom, columns 1..24 left to
right, as the plate is seen from above with A1 at the top left. RxRx1 uses the inner 308
wells (B..O x 2..23); wells without a value are left grey.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patheffects import withStroke

ROWS = "ABCDEFGHIJKLMNOP"
N_ROWS, N_COLUMNS = 16, 24
# Per-well columns shown, in this order of preference, where the table has them (bare, or with
# the ``_median`` / ``_mean`` suffix of several aggregation operations): nucleus size, ER (ConA)
# and mitochondria (MitoTracker) intensity; DNA content and cell size where those are missing.
KEY_FEATURES = (
    "Nuclei_AreaShape_Area",
    "Cells_Intensity_MeanIntensity_w2",
    "Cells_Intensity_MeanIntensity_w5",
    "Nuclei_Intensity_IntegratedIntensity_w1",
    "Cells_AreaShape_Area",
)
WELL_TYPE_STYLE = {  # marker, colour, label
    "negative_control": ("s", "black", "negative control"),
    "positive_control": ("o", "crimson", "positive control"),
}
MISSING_COLOR = "0.85"


# --------------------------------------------------------------------------- helpers (no drawing)


def well_position(well: str) -> tuple[int, int]:
    """``"B02"`` -> ``(1, 1)``: zero-based (row, column) on the 16 x 24 grid."""
    row, column = well[:1].upper(), well[1:]
    if row not in ROWS or not column.isdigit() or not 1 <= int(column) <= N_COLUMNS:
        raise ValueError(f"well {well!r} is not on a 384-well plate (rows A..P, columns 1..24)")
    return ROWS.index(row), int(column) - 1


def plate_grid(wells: Sequence[str], values: Sequence[float]) -> np.ndarray:
    """A ``(16, 24)`` float array holding ``values`` at their wells, NaN elsewhere."""
    grid = np.full((N_ROWS, N_COLUMNS), np.nan)
    for well, value in zip(wells, values):
        grid[well_position(well)] = value
    return grid


def pick_features(table: pd.DataFrame, wanted: Sequence[str] = KEY_FEATURES, n: int = 3) -> list[str]:
    """Up to ``n`` of ``wanted`` that are columns of ``table`` (bare, or suffixed ``_median`` /
    ``_mean``), topped up with the table's first feature columns if fewer exist."""
    columns = set(table.columns)
    chosen = []
    for name in wanted:
        match = next((c for c in (name, f"{name}_median", f"{name}_mean") if c in columns), None)
        if match and match not in chosen:
            chosen.append(match)
    for column in table.columns:
        if len(chosen) >= n:
            break
        if not column.startswith("Metadata_") and column not in chosen and pd.api.types.is_numeric_dtype(table[column]):
            chosen.append(column)
    return chosen[:n]


def typical_well(wells: pd.DataFrame) -> pd.Series:
    """The row of the lowest plate's well whose ``Metadata_CellCount`` is closest to that
    plate's median (ties: the first well by name): a site worth showing as typical."""
    plate = wells[wells["Metadata_Plate"] == wells["Metadata_Plate"].min()].sort_values("Metadata_Well")
    if plate.empty:
        raise ValueError("no wells to choose a typical one from")
    counts = plate["Metadata_CellCount"].to_numpy(np.float64)
    return plate.iloc[int(np.argmin(np.abs(counts - np.nanmedian(counts))))]


def standardize(values: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit variance over all rows (NaN -> 0 afterwards; constant
    columns stay 0). Puts features of different units on one scale before PCA."""
    x = np.asarray(values, np.float64)
    x = np.where(np.isfinite(x), x, np.nan)
    mean = np.nanmean(x, axis=0)
    std = np.nanstd(x, axis=0)
    z = (x - mean) / np.where(std > 0, std, 1.0)
    return np.nan_to_num(z)


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def principal_components(values: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the first ``n`` principal components of the standardized rows (fewer where the
    data has fewer dimensions), and each component's fraction of the total variance."""
    z = standardize(values)
    z -= z.mean(axis=0)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    k = min(n, len(s))
    total = float((s**2).sum())
    return u[:, :k] * s[:k], (s[:k] ** 2 / total if total > 0 else np.zeros(k))


def project_2d(values: np.ndarray, method: str = "pca", *, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Standardized rows projected to 2-D; returns ``(coords, axis labels)``.

    ``pca`` labels its axes with the explained variance; ``umap`` needs the optional
    ``umap-learn`` package.
    """
    if method == "pca":
        scores, ratio = principal_components(values, 2)
        coords, share = np.zeros((len(scores), 2)), np.zeros(2)
        coords[:, : scores.shape[1]], share[: len(ratio)] = scores, ratio
        return coords, [f"PC{i + 1} ({100 * r:.0f}% of variance)" for i, r in enumerate(share)]
    if method == "umap":
        try:
            import umap
        except ImportError as exc:
            raise ImportError("UMAP projections need the umap-learn package: pip install umap-learn") from exc
        neighbors = max(2, min(15, len(values) - 1))
        coords = umap.UMAP(n_neighbors=neighbors, random_state=seed).fit_transform(standardize(values))
        return coords, ["UMAP 1", "UMAP 2"]
    raise ValueError(f"unknown projection {method!r}; expected 'pca' or 'umap'")


def batch_silhouette(coords: np.ndarray, batches: Sequence, *, max_rows: int = 5000) -> float | None:
    """Silhouette score of the batch labels of rows ``coords`` (e.g. the first 10 principal
    components, :func:`principal_components`): near 1 when wells cluster by batch (a batch
    effect), near 0 or below when batches mix. None where undefined (one batch, or one well
    a batch)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(batches)
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return None
    # pairwise distances are quadratic in memory: a seeded sample of at most max_rows wells
    sample = max_rows if len(labels) > max_rows else None
    return float(silhouette_score(coords, labels, sample_size=sample, random_state=0))


def _panel_grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return -(-n // ncols), ncols


def _categorical_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _shaded_colors(groups: Sequence[tuple[str, object]]) -> dict:
    """(experiment, plate) -> colour: one hue per experiment, a shade of it per plate (the
    4-shade families of tab20c and tab20b; they repeat after 9 experiments)."""
    from matplotlib import colormaps

    families = [(colormaps["tab20c"], k) for k in range(4)] + [(colormaps["tab20b"], k) for k in range(5)]
    experiments = sorted({e for e, _ in groups})
    colors = {}
    for e_index, experiment in enumerate(experiments):
        cmap, family = families[e_index % len(families)]
        plates = sorted(p for e, p in groups if e == experiment)
        for p_index, plate in enumerate(plates):
            colors[(experiment, plate)] = cmap(4 * family + p_index % 4)
    return colors


# --------------------------------------------------------------------------- figures


def sites_figure(panels: Sequence[tuple[np.ndarray, str]], *, ncols: int = 4, dpi: int = 100) -> Figure:
    """RGB images (``(H, W, 3)`` uint8, e.g. composites with outlines) in a grid, each with
    its title. Panels are sized so that an image of up to 512 px is drawn near 1:1."""
    if not panels:
        raise ValueError("sites_figure needs at least one image")
    nrows, ncols = _panel_grid(len(panels), ncols)
    side = float(np.clip(max(p[0].shape[1] for p in panels) / dpi, 3.0, 5.2))
    fig = Figure(figsize=(side * ncols, (side + 0.6) * nrows), dpi=dpi, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (rgb, title) in zip(axes.flat, panels):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    return fig


def plate_heatmaps(
    wells: pd.DataFrame,
    metrics: Sequence[str],
    *,
    title: str = "",
    labels: dict[str, str] | None = None,
) -> Figure:
    """One row of 16 x 24 heatmaps per plate of ``wells`` (one experiment's well table), one
    column per metric; control wells marked. Each metric has one colour scale over all plates
    (2nd-98th percentile), so plate-to-plate shifts show as colour shifts."""
    labels = labels or {}
    plates = sorted(wells["Metadata_Plate"].unique())
    if not plates or not metrics:
        raise ValueError("plate_heatmaps needs at least one plate and one metric")
    fig = Figure(figsize=(4.6 * len(metrics) + 0.4, 2.9 * len(plates) + 0.9), dpi=100, layout="constrained")
    axes = fig.subplots(len(plates), len(metrics), squeeze=False)
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad=MISSING_COLOR)
    for j, metric in enumerate(metrics):
        values = wells[metric].to_numpy(np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        image = None
        for i, plate in enumerate(plates):
            ax = axes[i, j]
            part = wells[wells["Metadata_Plate"] == plate]
            grid = plate_grid(part["Metadata_Well"], part[metric].to_numpy(np.float64))
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=lo, vmax=hi, origin="upper",
                              interpolation="nearest", aspect="equal")  # fmt: skip
            for well_type, (marker, color, _) in WELL_TYPE_STYLE.items():
                ctrl = part[part["Metadata_WellType"] == well_type] if "Metadata_WellType" in part else part.iloc[:0]
                if len(ctrl):
                    rc = np.array([well_position(w) for w in ctrl["Metadata_Well"]])
                    ax.scatter(rc[:, 1], rc[:, 0], marker=marker, s=26, facecolors="none", edgecolors=color, linewidths=1.3,
                               path_effects=[withStroke(linewidth=3.2, foreground="white")])  # visible on any colour
            ax.vlines(np.arange(0.5, N_COLUMNS - 1), -0.5, N_ROWS - 0.5, color="white", linewidth=0.4)
            ax.hlines(np.arange(0.5, N_ROWS - 1), -0.5, N_COLUMNS - 0.5, color="white", linewidth=0.4)
            ax.tick_params(length=0, labelsize=6, pad=1.5)
            # well names on the outer panels only (ticks are the slow part of drawing 16 x 24 grids)
            bottom = i == len(plates) - 1
            ax.set_xticks(np.arange(N_COLUMNS) if bottom else [], [str(c) for c in range(1, N_COLUMNS + 1)] if bottom else [])
            ax.set_yticks(np.arange(N_ROWS) if j == 0 else [], list(ROWS) if j == 0 else [])
            if j == 0:
                ax.set_ylabel(f"Plate {plate}", fontsize=10)
            if i == 0:
                ax.set_title(labels.get(metric, metric), fontsize=9)
        fig.colorbar(image, ax=axes[:, j].tolist(), shrink=0.6, aspect=30, location="bottom", pad=0.02)
    handles = [Line2D([], [], marker=m, color=c, linestyle="", markerfacecolor="none", label=lab)
               for m, c, lab in WELL_TYPE_STYLE.values()]  # fmt: skip
    handles.append(Line2D([], [], marker="s", color=MISSING_COLOR, linestyle="", label="no data / not imaged"))
    fig.legend(handles=handles, loc="outside upper right", ncols=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, x=0.02, ha="left")
    return fig


def _scatter_groups(ax, coords: np.ndarray, groups: pd.Series, colors: dict) -> None:
    for name, color in colors.items():
        rows = (groups == name).to_numpy()
        ax.scatter(coords[rows, 0], coords[rows, 1], s=14, color=color, alpha=0.85, linewidths=0, label=str(name))


def _legend_outside(ax, title: str, n: int, max_entries: int = 60) -> None:
    if n > max_entries:
        ax.text(1.02, 1.0, f"{n} {title.lower()}s\n(legend omitted)", transform=ax.transAxes, fontsize=7, va="top")
        return
    ax.legend(title=title, fontsize=6.5, title_fontsize=7.5, markerscale=1.2, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, ncols=1 if n <= 30 else 2, handletextpad=0.2, columnspacing=0.6, labelspacing=0.25)  # fmt: skip


def batch_effect_figure(
    raw: pd.DataFrame,
    normalized: pd.DataFrame,
    features: Sequence[str],
    *,
    method: str = "pca",
    seed: int = 0,
    normalization: str = "per-plate control normalization",
) -> Figure:
    """Well profiles in 2-D before (``raw``, z-scored) and after (``normalized``) normalization,
    coloured by experiment and by plate (one hue per experiment, a shade per plate). Rows of
    the two tables are the same wells in the same order.

    Each title carries the silhouette score of its colouring (:func:`batch_silhouette`, on 10
    principal components): high where wells cluster by batch; it should fall after normalization.
    """
    features = list(features)
    if len(raw) != len(normalized):
        raise ValueError(f"raw has {len(raw)} wells but normalized has {len(normalized)}; pass the same wells")
    experiment = raw["Metadata_Experiment"].astype(str).reset_index(drop=True)
    plate = list(zip(experiment, raw["Metadata_Plate"].astype(str)))
    plate_label = pd.Series([f"{e} P{p}" for e, p in plate])
    by_experiment = dict(zip(sorted(experiment.unique()), _categorical_colors(experiment.nunique())))
    by_plate = {f"{e} P{p}": c for (e, p), c in sorted(_shaded_colors(sorted(set(plate))).items())}
    fig = Figure(figsize=(13, 10), dpi=100, layout="constrained")
    axes = fig.subplots(2, 2, squeeze=False)
    for i, (name, table) in enumerate((("before", raw), ("after", normalized))):
        values = table[features].to_numpy(np.float64)
        components = principal_components(values, 10)[0]  # the silhouettes' space
        coords, axis_labels = project_2d(values, method, seed=seed)
        state = "raw well profiles, z-scored over all wells" if name == "before" else normalization
        for j, (groups, colors, what) in enumerate(((experiment, by_experiment, "experiment"), (plate_label, by_plate, "plate"))):
            ax = axes[i, j]
            _scatter_groups(ax, coords, groups, colors)
            if i == 0:  # one legend a column, beside the top panel, off the points
                _legend_outside(ax, what.capitalize(), len(colors))
            score = batch_silhouette(components, groups)
            ax.set_xlabel(axis_labels[0], fontsize=8)
            ax.set_ylabel(axis_labels[1], fontsize=8)
            ax.tick_params(labelsize=7)
            sil = f"; silhouette by {what} {score:.2f}" if score is not None else ""
            ax.set_title(f"{name.upper()}: {state}\ncoloured by {what}{sil}", fontsize=9)
    fig.suptitle(f"{len(raw)} wells, {len(features)} features, {method.upper()}", fontsize=11)
    return fig


def control_distributions(wells: pd.DataFrame, features: Sequence[str], *, labels: dict[str, str] | None = None) -> Figure:
    """Raw values of the control wells' features, one box per (experiment, plate) and well type.

    Every control well is a point (positive controls circles, negative squares; RxRx1 has one
    negative control a plate); a well type with at least 5 wells on a plate also gets a box.
    Plates of one experiment sit together, experiments separated by grey lines.
    """
    labels = labels or {}
    ctrl = wells[wells["Metadata_WellType"].isin(list(WELL_TYPE_STYLE))]
    if ctrl.empty:
        raise ValueError("no control wells (Metadata_WellType negative_control / positive_control) in the table")
    plates = ctrl[["Metadata_Experiment", "Metadata_Plate"]].drop_duplicates().sort_values(
        ["Metadata_Experiment", "Metadata_Plate"]).reset_index(drop=True)  # fmt: skip
    x = {(r.Metadata_Experiment, r.Metadata_Plate): k for k, r in enumerate(plates.itertuples())}
    width = max(8.0, 0.34 * len(plates) + 2.5)
    fig = Figure(figsize=(width, 2.6 * len(features) + 1.4), dpi=100, layout="constrained")
    axes = fig.subplots(len(features), 1, squeeze=False, sharex=True)[:, 0]
    rng = np.random.default_rng(0)
    offsets = {"negative_control": -0.18, "positive_control": 0.18}
    for ax, feature in zip(axes, features):
        for well_type, (marker, color, _) in WELL_TYPE_STYLE.items():
            part = ctrl[ctrl["Metadata_WellType"] == well_type]
            if part.empty:
                continue
            groups = part.groupby(["Metadata_Experiment", "Metadata_Plate"])[feature]
            pos = [x[k] + offsets[well_type] for k in groups.groups]
            data = [g.dropna().to_numpy() for _, g in groups]
            keep = [i for i, d in enumerate(data) if len(d) >= 5]  # a box of fewer wells says less than the wells
            if keep:
                ax.boxplot([data[i] for i in keep], positions=[pos[i] for i in keep], widths=0.3, showfliers=False,
                           patch_artist=True, boxprops={"facecolor": "none", "edgecolor": color},
                           medianprops={"color": color}, whiskerprops={"color": color}, capprops={"color": color},
                           manage_ticks=False)  # fmt: skip
            for p, d in zip(pos, data):
                ax.scatter(p + rng.uniform(-0.06, 0.06, len(d)), d, marker=marker, s=16, facecolors="none",
                           edgecolors=color, linewidths=1.0)  # fmt: skip
        for boundary in plates.index[plates["Metadata_Experiment"].ne(plates["Metadata_Experiment"].shift())][1:]:
            ax.axvline(boundary - 0.5, color="0.6", linewidth=0.8)
        ax.set_ylabel(labels.get(feature, feature), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", color="0.92")
    axes[-1].set_xticks(range(len(plates)), [f"{r.Metadata_Experiment} P{r.Metadata_Plate}" for r in plates.itertuples()],
                        rotation=60, ha="right", fontsize=7)  # fmt: skip
    axes[-1].set_xlim(-0.6, len(plates) - 0.4)
    handles = [Line2D([], [], marker=m, color=c, linestyle="", markerfacecolor="none", label=lab)
               for m, c, lab in WELL_TYPE_STYLE.values()]  # fmt: skip
    fig.legend(handles=handles, loc="outside upper right", ncols=2, fontsize=8, frameon=False)
    fig.suptitle("Control wells by plate (raw well medians)", fontsize=11, x=0.02, ha="left")
    return fig


def accuracy_figure(report: dict, *, chance: float | None = None) -> Figure:
    """Cross-validated top-1 / top-5 accuracy per cell type from ``cellfeat fit``'s
    ``report.json`` (``cv_summary`` bars, each fold's top-1 as a dot), with the chance level."""
    summary = report.get("cv_summary")
    if not summary:
        raise ValueError("the fit report has no cv_summary: fit ran without validation (fewer than 2 experiments or folds = 0)")
    names = ["all"] + sorted(k for k in summary if k != "all") if "all" in summary else sorted(summary)
    fig = Figure(figsize=(max(5.5, 1.3 * len(names) + 2.5), 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    at = np.arange(len(names))
    for shift, metric, color in ((-0.2, "top1", "tab:blue"), (0.2, "top5", "tab:orange")):
        heights = [summary[n][metric] for n in names]
        bars = ax.bar(at + shift, heights, width=0.4, color=color, label=metric.replace("top", "top-"))
        ax.bar_label(bars, [f"{h:.2f}" for h in heights], fontsize=7, padding=1)
    for fold in report.get("cv", {}).get("folds", []):
        for k, n in enumerate(names):
            s = fold["scores"].get(n)
            if s and s["n"]:  # left part of the top-1 bar, clear of its value label
                ax.scatter(k - 0.33, s["top1"], color="black", s=10, zorder=3)
    if chance is not None:
        ax.axhline(chance, color="crimson", linestyle="--", linewidth=1, label=f"chance top-1 ({chance:.3f})")
    ax.scatter([], [], color="black", s=10, label="top-1 of each fold")
    ax.set_xticks(at, [f"{n}\n({summary[n]['n']} wells)" for n in names], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("validation accuracy (before plate assignment)", fontsize=8)
    ax.legend(fontsize=7, loc="upper right", ncols=2)
    ax.set_title("siRNA accuracy on held-out experiments, by cell type", fontsize=10)
    return fig

"""Every plot of the pipeline: one small style, and PNGs with the same bytes on every rebuild.

`figure(path, ...)` opens a matplotlib figure in the shared style, hands it to the caller to draw, then lays it
out and writes it atomically without the metadata that would differ between builds (pipeline.core.atomic)."""
import contextlib

import numpy as np

from pipeline.core.atomic import save_png

# Colours of the memory-map segments, kept across boards so one glance compares them.
SEGMENT_COLOURS = {"code": "#4c72b0", "weights": "#dd8452", "activations": "#55a868", "data": "#c44e52",
                   "stack": "#8172b3", "free": "#e5e5e5"}
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "savefig.facecolor": "white",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: builds run headless
    from matplotlib import pyplot

    return pyplot


@contextlib.contextmanager
def figure(path, *, nrows: int = 1, ncols: int = 1, figsize=(6, 3.5)):
    """Yield (figure, axes) in the shared style, axes being one Axes or, for several panels, a flat array of
    them; on leaving, write the PNG to `path` and close the figure."""
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
        try:
            yield fig, axes.ravel() if nrows * ncols > 1 else axes[0][0]
            fig.tight_layout()
            save_png(path, fig)
        finally:
            plt.close(fig)


def confusion_matrix_plot(matrix, classes, path, title: str) -> None:
    """Counts of (true class, predicted class), darker for more, with each count written in its cell."""
    matrix = np.asarray(matrix)
    with figure(path, figsize=(5.6, 4.8)) as (_, ax):
        ax.grid(False)
        image = ax.imshow(matrix, cmap="Blues")
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > threshold else "black")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
               title=title)
        ax.set_xticklabels(classes, rotation=45, ha="right")
        ax.set_yticklabels(classes)
        ax.figure.colorbar(image, ax=ax, fraction=0.046)


def memory_map_plot(regions: list[dict], path, title: str) -> None:
    """One stacked horizontal bar per memory region: its segments (bytes) and the free rest, against the
    region's size. regions: [{"name", "size", "segments": {kind: bytes}}]."""
    with figure(path, figsize=(7, 0.9 + 0.45 * len(regions))) as (_, ax):
        for row, region in enumerate(regions):
            left = 0
            for kind, size in region["segments"].items():
                ax.barh(row, size / 1024, left=left / 1024, color=SEGMENT_COLOURS[kind], label=kind)
                left += size
        ax.set_yticks(range(len(regions)), [f"{r['name']} ({r['size'] // 1024} KiB)" for r in regions])
        ax.invert_yaxis()
        ax.set(xlabel="KiB", title=title)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one legend entry per kind, not per bar
        ax.legend(unique.values(), unique.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)


def bar_plot(labels, values, path, *, title: str, xlabel: str) -> None:
    """Horizontal bars, one per label, top to bottom in the order given (e.g. instructions per layer)."""
    with figure(path, figsize=(7, 1 + 0.3 * len(labels))) as (_, ax):
        ax.barh(range(len(labels)), values, color=SEGMENT_COLOURS["code"])
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set(xlabel=xlabel, title=title)


def accuracy_time_plot(curves: dict, path, *, title: str) -> None:
    """Accuracy against training minutes: one line per run ({label: (minutes, accuracies)})."""
    with figure(path, figsize=(6, 3.8)) as (_, ax):
        for label, (minutes, accuracies) in curves.items():
            ax.plot(minutes, [100 * a for a in accuracies], marker="o", markersize=3, label=label)
        ax.set(xlabel="training wall-clock (minutes)", ylabel="test accuracy (%)", title=title)
        ax.legend()

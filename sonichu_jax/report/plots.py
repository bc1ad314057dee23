"""The report's figures, drawn with matplotlib's object API onto an Agg canvas (no pyplot:
nothing global changes in a notebook that imports the library) and returned as PNG bytes."""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np

from sonichu_jax.report.scoring import Column

DPI = 90
_COLUMNS = 3


def _figure(n_panels: int, width: float = 4.2, height: float = 2.7, extra_bottom: float = 0.0):
    from matplotlib.figure import Figure  # half a second to import: only when a report is drawn

    rows = math.ceil(n_panels / _COLUMNS)
    cols = min(n_panels, _COLUMNS)
    fig = Figure(figsize=(width * cols, height * rows + extra_bottom), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    # Fixed margins in inches (a constrained layout would double the drawing time).
    total_h = height * rows + extra_bottom
    fig.subplots_adjust(left=0.75 / (width * cols), right=1 - 0.15 / (width * cols), top=1 - 0.35 / total_h,
                        bottom=(0.45 + extra_bottom) / total_h, wspace=0.3, hspace=0.55)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in points], [p[1] for p in points]


def _panels(metrics: Sequence[dict[str, Any]]) -> list[tuple[str, list[tuple[str, list, list, str]], bool]]:
    """(title, [(label, steps, values, line style)], log scale) for each panel with data."""
    train = [m for m in metrics if m.get("kind") == "train"]
    val = [m for m in metrics if m.get("kind") == "val"]
    keys = sorted({k for m in train for k in m})
    losses = [k for k in keys if k.startswith("loss")]
    panels = [
        ("loss", [(k, *_series(train, k), "-") for k in losses], True),
        ("learning rate", [("lr", *_series(train, "lr"), "-")], False),
        ("weight decay", [("wd", *_series(train, "wd"), "-")], False),
        ("EMA momentum", [("momentum", *_series(train, "momentum"), "-")], False),
        ("gradient norm", [("grad_norm", *_series(train, "grad_norm"), "-")], True),
        ("images / s", [("img_per_s", *_series(train, "img_per_s"), "-")], False),
        ("representation std (I-JEPA)", [(k, *_series(train, k), "-") for k in ("target_std", "pred_std")], False),
    ]
    if val:
        tasks = list(dict.fromkeys(t for m in val if isinstance(m.get("per_task"), dict) for t in m["per_task"]))
        lines = [("weighted", *_series(val, "val_mre"), "-o"), ("unweighted", *_series(val, "val_mre_unweighted"), "--s")]
        for task in tasks:
            steps = [m["step"] for m in val if task in (m.get("per_task") or {})]
            lines.append((task, steps, [float(m["per_task"][task]) for m in val if task in (m.get("per_task") or {})], ":^"))
        panels.append(("validation MRE (px)", lines, False))
    return [(title, [ln for ln in lines if ln[1]], log) for title, lines, log in panels
            if any(ln[1] for ln in lines)]


def training_curves(metrics: Sequence[dict[str, Any]]) -> bytes | None:
    """One figure of a run's logged metrics against the step; None if nothing is logged."""
    panels = _panels(metrics)
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, (name, lines, log) in zip(axes, panels):
        for label, steps, values, style in lines:
            ax.plot(steps, values, style, label=label, markersize=3, linewidth=1.2)
        finite = [v for _, _, values, _ in lines for v in values if np.isfinite(v)]
        if log and finite and min(finite) > 0 and max(finite) > 10 * min(finite):  # spans a decade
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    return _png(fig)


def error_distribution(columns: Sequence[Column], records: Sequence, tasks: Sequence[str]) -> bytes:
    """Per task, a box plot of each model's per-image mean error (mean marked by a
    triangle, every image a dot)."""
    longest = max((len(c.name) for c in columns), default=0)  # rotated tick labels need room below
    fig, axes = _figure(len(tasks), width=max(4.2, 1.0 + 0.9 * len(columns)), height=3.0,
                        extra_bottom=0.03 * longest)
    rng = np.random.default_rng(0)  # horizontal jitter of the dots, the same on every run
    for ax, task in zip(axes, tasks):
        names, data = [], []
        for column in columns:
            values = [e for i, e in zip(column.indices, column.errors_px) if records[i].task == task and np.isfinite(e)]
            if values:
                names.append(column.name)
                data.append(values)
        if data:
            ax.boxplot(data, showmeans=True, showfliers=False, widths=0.6)
            for x, values in enumerate(data, start=1):
                ax.plot(x + rng.uniform(-0.15, 0.15, len(values)), values, ".", color="0.35", markersize=3, alpha=0.6)
            ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}: error per image (px)", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)

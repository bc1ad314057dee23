"""The report as one HTML file: inline CSS, images as data URIs, no script, so that it
opens from disk, can be mailed, and looks the same offline."""

from __future__ import annotations

import base64
import datetime
import html
from typing import Mapping, Sequence

import numpy as np

from sonichu_jax import __version__
from sonichu_jax.evaluation import table_rows
from sonichu_jax.report.gallery import Tile
from sonichu_jax.report.runs import Run
from sonichu_jax.report.scoring import Column, EvalSet

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { background: #f3f3f3; }
tr.ensemble td { font-style: italic; } td.best { font-weight: bold; }
.note { color: #8a4b00; } .muted { color: #666; font-size: 0.9em; }
img.figure { max-width: 100%; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.6em; margin-bottom: 1em; }
.gallery figure { margin: 0; width: 224px; } .gallery img { width: 224px; display: block; }
.gallery figcaption { font-size: 0.8em; overflow-wrap: anywhere; }
"""


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.2f}"


def _runs_table(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        done = "–" if run.last_step is None else str(run.last_step)
        total = "?" if run.total_steps is None else str(run.total_steps)
        model = "model/" if run.model_dir else ("backbone/" if run.kind == "pretraining" else "none yet")
        rows.append(f"<tr><td>{_e(run.name)}</td><td>{run.kind}</td><td>{done} / {total}</td>"
                    f"<td>{model}</td><td class=muted>{_e(run.path)}</td></tr>")
    return ("<table id=runs><thead><tr><th>run</th><th>stage</th><th>steps</th><th>weights</th><th>path</th>"
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _mre_table(columns: Sequence[Column], tasks: Sequence[str], unit: str) -> str:
    """The core's table transposed: models as rows, tasks as columns, the best of each task in bold."""
    *task_rows, weighted, unweighted = table_rows({c.name: c.report for c in columns}, unit, tasks)
    head = "".join(f"<th>{_e(row.label)}<br><span class=muted>n={row.n}</span></th>" for row in task_rows)
    best = [min((v for v in row.values if v is not None and np.isfinite(v)), default=None) for row in task_rows]
    rows = []
    for j, column in enumerate(columns):
        cells = "".join(
            f"<td data-task='{_e(row.label)}'{' class=best' if row.values[j] is not None and row.values[j] == b else ''}>"
            f"{_fmt(row.values[j])}</td>" for row, b in zip(task_rows, best))
        rows.append(f"<tr class={column.kind} data-model='{_e(column.name)}'><td>{_e(column.name)}</td>"
                    f"<td>{column.kind}</td><td>{column.passes}</td>{cells}"
                    f"<td>{_fmt(weighted.values[j])}</td><td>{_fmt(unweighted.values[j])}</td></tr>")
    return (f"<table id=mre-{unit}><thead><tr><th>model</th><th>kind</th><th>passes / image</th>{head}"
            f"<th>weighted</th><th>unweighted</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _gallery(galleries: Mapping[str, Mapping[str, list[Tile]]], worst: int) -> str:
    parts = [f"<p class=muted>The {worst} images with the largest mean error per task and model. Blue rings: "
             "the label; yellow dots, numbered, with the task's measurement lines: the prediction; red: "
             "the error of each keypoint.</p>"]
    for model, by_task in galleries.items():
        parts.append(f"<h3>{_e(model)}</h3>")
        for task, tiles in by_task.items():
            figures = "".join(
                f"<figure class=worst data-model='{_e(model)}' data-task='{_e(task)}'>"
                f"<img src='{data_uri(t.jpeg, 'image/jpeg')}' alt='{_e(t.name)}'><figcaption>{_e(t.name)}: "
                f"{t.error_px:.2f} px" + ("" if t.error_mm is None else f" ({t.error_mm:.2f} mm)")
                + "</figcaption></figure>"
                for t in tiles
            )
            parts.append(f"<h4>{_e(task)}</h4><div class=gallery>{figures}</div>")
    return "".join(parts)


def render(*, runs: Sequence[Run], evalset: EvalSet | None, columns: Sequence[Column], tasks: Sequence[str],
           curves: Mapping[str, bytes | None], distribution: bytes | None,
           galleries: Mapping[str, Mapping[str, list[Tile]]], worst: int, notes: Sequence[str], tta: bool) -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = [f"<h1>Training report</h1><p class=muted>sonichu-jax {__version__}, written {now}</p>",
            "<section id=runs-section><h2>Runs</h2>", _runs_table(runs)]
    body += [f"<p class=note>{_e(n)}</p>" for n in notes]
    body.append("</section><section id=results><h2>Results</h2>")
    if columns:
        n = len(evalset.records)
        body.append(f"<p>Mean radial error of each model on {n} images: {_e(evalset.description)}. "
                    f"{'With' if tta else 'Without'} flip test-time augmentation; errors in the original "
                    "images' pixels; weighted: the mean over images, unweighted: the mean of the per-task means; "
                    "the best value of each task in bold.</p>")
        body.append(_mre_table(columns, tasks, "px"))
        if any(c.report.weighted_mm is not None for c in columns):
            body.append("<p>The same in mm, over the images whose pixel spacing is known:</p>")
            body.append(_mre_table(columns, tasks, "mm"))
    else:
        body.append("<p class=note>No run has a model yet: there is nothing to evaluate.</p>")
    body.append("</section>")
    if distribution is not None:
        body.append("<section id=distribution><h2>Error distribution</h2>"
                    f"<img class=figure src='{data_uri(distribution)}' alt='error distribution per task'></section>")
    body.append("<section id=curves><h2>Training curves</h2>")
    kinds = {run.name: run.kind for run in runs}
    for name, png in curves.items():
        body.append(f"<h3>{_e(name)} <span class=muted>({kinds[name]})</span></h3>")
        body.append(f"<img class=figure src='{data_uri(png)}' alt='training curves of {_e(name)}'>" if png
                    else "<p class=note>No metrics logged yet.</p>")
    body.append("</section>")
    if galleries:
        body.append(f"<section id=worst><h2>Worst images</h2>{_gallery(galleries, worst)}</section>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>sonichu-jax report</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")

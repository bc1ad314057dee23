"""`sonichu-jax report`: the page of the quick demo's runs, a single teacher run, a run that
stopped early, and what is not a run; the page opened in headless Chromium when installed."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from sonichu_jax.cli import main

TEACHERS = ("R1", "R2", "R3", "selective", "r3capped")
TASKS = ("HC", "fetal_femur")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


class Page(HTMLParser):
    """What the tests look at: section ids, images (with their section), table rows by
    model with their cells, and gallery figures."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.figures, self.notes = [], [], [], []
        self.rows: dict[str, dict[str, list]] = {}  # table id -> model -> cell texts
        self._table = self._row = self._cell = self._note = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.images.append((self.sections[-1], a.get("src", "")))
        elif tag == "table":
            self._table = a.get("id")
            self.rows[self._table] = {}
        elif tag == "tr" and "data-model" in a:
            self._row = self.rows[self._table].setdefault(a["data-model"], [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [a.get("data-task"), ""]
        elif tag == "figure":
            self.figures.append((a.get("data-model"), a.get("data-task")))
        elif tag == "p" and "note" in (a.get("class") or ""):
            self._note = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(tuple(self._cell))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "p" and self._note is not None:
            self.notes.append(self._note)
            self._note = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data
        if self._note is not None:
            self._note += data


def decode_image(src: str) -> np.ndarray | None:
    match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", src)
    if match is None:
        return None
    return cv2.imdecode(np.frombuffer(base64.b64decode(match.group(2)), np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def demo_report(quick_demo):
    """The page the demo ends with."""
    path = str(quick_demo.out / "report.html")
    assert f"report:      {path}" in quick_demo.stdout
    return path


def test_demo_report_has_every_part(quick_demo, demo_report):
    text = open(demo_report, encoding="utf-8").read()
    page = Page(text)
    assert page.sections == ["runs-section", "results", "distribution", "curves", "worst"]
    models = [*sorted(TEACHERS), "student", "median of 5 teachers"]  # runs by stage, then name
    table = page.rows["mre-px"]
    assert list(table) == models
    assert "mre-mm" not in page.rows  # synthetic images have no pixel spacing
    # MRE per task and overall agree with the demo's own evaluation of the same held-out set
    demo = json.loads((quick_demo.out / "results.json").read_text())["results"]
    demo["median of 5 teachers"] = demo["median ensemble"]
    for model in models:
        cells = table[model]
        by_task = {task: float(text) for task, text in cells if task}
        assert set(by_task) == set(TASKS)
        for task in TASKS:
            assert abs(by_task[task] - demo[model]["tasks"][task]["mre_px"]) < 0.006, (model, task)
        passes, weighted, unweighted = cells[2][1], float(cells[-2][1]), float(cells[-1][1])
        assert passes == ("10" if model.startswith("median") else "2")
        assert abs(weighted - demo[model]["weighted_mre_px"]) < 0.006
        assert abs(unweighted - demo[model]["unweighted_mre_px"]) < 0.006
    for run in ("ijepa", *TEACHERS, "student"):
        assert f"<td>{run}</td>" in text
    # 5 worst images per task and model, the training curves of all seven runs, one box plot
    assert sorted(set(page.figures)) == sorted((m, t) for m in models for t in TASKS)
    assert all(page.figures.count(key) == 5 for key in set(page.figures))
    sections = [section for section, _ in page.images]
    assert sections.count("curves") == 7 and sections.count("distribution") == 1
    assert sections.count("worst") == 7 * 2 * 5
    for _, src in page.images:  # every image is embedded and decodes
        image = decode_image(src)
        assert image is not None and image.size > 0


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed (Debian: chromium)")
def test_demo_report_renders_in_chromium(demo_report, tmp_path):
    """No broken image in a real browser, and a screenshot that is not blank."""
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
              "document.body.dataset.images = imgs.length;"
              "document.body.dataset.broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length; });"
              "</script></body>")
    probe.write_text(open(demo_report, encoding="utf-8").read().replace("</body>", script), encoding="utf-8")
    chromium = shutil.which("chromium")
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    counts = dict(re.findall(r'data-(images|broken)="(\d+)"', dom))
    assert counts == {"images": str(1 + 5 + 50), "broken": "0"}, counts
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1280,2400",
                    f"--screenshot={shot}", "file://" + demo_report], capture_output=True, timeout=120, check=True)
    image = cv2.imread(str(shot))
    assert image.shape == (2400, 1280, 3)
    # the top of the page holds the tables and the box plots: far from a blank page
    assert (image[:1500] < 200).mean() > 0.02


def _copy_run(src, dst, with_model=True, forget_data=False):
    ignore = shutil.ignore_patterns("checkpoints", "best", *(() if with_model else ("model",)))
    shutil.copytree(src, dst, ignore=ignore)
    if forget_data:  # as runs written before runs recorded their --data path
        config = json.loads((dst / "train_config.json").read_text())
        del config["data"]["source"]
        (dst / "train_config.json").write_text(json.dumps(config))
    return dst


def test_single_teacher_run_is_scored_on_its_validation_split(quick_demo, tmp_path, capsys):
    run = _copy_run(quick_demo.out / "teachers" / "R1", tmp_path / "t1")
    recorded = json.loads((run / "train_config.json").read_text())["data"]["source"]
    assert recorded == str(quick_demo.out / "data" / "train")  # the run recorded its --data, absolute
    out, summary = tmp_path / "t1.html", tmp_path / "t1.json"
    assert main(["report", str(run), "--out", str(out), "--json", str(summary), "--worst", "2", "--quiet"]) == 0
    result = json.loads(summary.read_text())["results"]["t1"]
    # the training loop validated the final weights on the same split with the same TTA
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in line][-1]
    assert result["n"] == 7 + 4 and result["passes_per_image"] == 2  # 15 % of 48 HC and 24 femur labels
    assert result["weighted_mre_px"] == pytest.approx(val["val_mre"], abs=1e-3)
    for task in TASKS:
        assert result["tasks"][task]["mre_px"] == pytest.approx(val["per_task"][task], abs=1e-3)
    page = Page(out.read_text())
    assert list(page.rows["mre-px"]) == ["t1"] and len(page.figures) == 2 * 2
    assert f"report: {out}" in capsys.readouterr().out


def test_run_without_recorded_data_needs_an_evaluation_set(quick_demo, tmp_path, capsys):
    run = _copy_run(quick_demo.out / "teachers" / "R1", tmp_path / "t1", forget_data=True)
    assert main(["report", str(run), "--out", str(tmp_path / "r.html"), "--quiet"]) == 2
    assert "does not record the data" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_run_stopped_early_gets_its_curves(quick_demo, tmp_path, capsys):
    run = _copy_run(quick_demo.out / "teachers" / "R2", tmp_path / "t2", with_model=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:4]) + '\n{"step": 60, "kind": "tr')  # killed mid-line
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--quiet"]) == 0
    page = Page(out.read_text())
    assert page.sections == ["runs-section", "results", "curves"]
    assert [section for section, _ in page.images] == ["curves"]
    assert any("stopped at step 40 of 60" in note for note in page.notes)
    assert "stopped at step 40 of 60" in capsys.readouterr().err


def test_not_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train_config.json" in err and "metrics.jsonl" in err
    assert not (tmp_path / "r.html").exists()

"""Random-access data sources (FM_UIA CSV files, JSONL manifests, folders of frames, packs):
a sequence of `Record` and a `LoadReport` (``src.report``); ``strict=True`` raises
`InputError` at the first problem. The formats: README, "Data formats"."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from sonichu_jax.config import CARD_TASKS, TaskSpec
from sonichu_jax.data.imagesize import image_size
from sonichu_jax.data.records import LoadReport, Record
from sonichu_jax.data.shards import is_pack, load_pack
from sonichu_jax.errors import InputError
from sonichu_jax.preprocess import IMAGE_EXTENSIONS, find_images

IMAGE_COLUMN_CANDIDATES = (
    "image", "image_path", "img_path", "filename", "file_name", "image_name", "path", "img", "file",
)
SPACING_COLUMN_CANDIDATES = ("spacing_mm", "pixel_spacing_mm", "pixel_spacing", "spacing")
MANIFEST_NAME = "manifest.jsonl"
POINT_COLUMN = re.compile(r"^point_(\d+)_xy$", re.IGNORECASE)
# Text files are opened with errors="surrogateescape": a byte that is not UTF-8 becomes
# one of these code points, so the line it is on can be reported instead of the whole
# file failing with a UnicodeDecodeError.
_UNDECODED = re.compile("[\udc80-\udcff]")


class Source(list):
    """A loaded list of records and the report of how they were loaded."""

    def __init__(self, records: list[Record], report: LoadReport):
        super().__init__(records)
        self.report = report

    @property
    def records(self) -> list[Record]:
        return self

    def tasks(self) -> tuple[str, ...]:
        """Tasks present, in first-seen order."""
        return tuple(dict.fromkeys(r.task for r in self if r.task is not None))


def _task_table(tasks: Iterable[TaskSpec] | None) -> dict[str, TaskSpec]:
    return {t.name: t for t in (CARD_TASKS if tasks is None else tasks)}


def _resolve(path: str, root: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))


def _open_text(path: str, what: str, encoding: str = "utf-8"):
    try:
        return open(path, newline="", encoding=encoding, errors="surrogateescape")
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None


def _not_utf8(text: str) -> str | None:
    """None for clean text, else a description of the first byte that is not UTF-8."""
    match = _UNDECODED.search(text)
    if match is None:
        return None
    return f"not UTF-8 text (byte 0x{ord(match.group()) - 0xDC00:02X}); save the file as UTF-8"


def _positive(value: Any, key: str) -> float:
    """A positive finite number (a pixel size, an image side) or ValueError."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number > 0):
        raise ValueError(f"'{key}' must be a positive number, got {value!r}")
    return number


def _finish_record(
    *,
    image: str,
    task: str,
    kps: np.ndarray,
    valid: np.ndarray,
    spec: TaskSpec,
    location: str,
    report: LoadReport,
    check_bounds: bool,
    size: tuple[int, int] | None = None,
    **fields: Any,
) -> Record | None:
    """Apply the checks shared by CSV and manifest rows; None means the row is skipped."""
    if kps.shape[0] != spec.num_keypoints:
        report.add(
            location, "wrong_keypoint_count",
            f"{kps.shape[0]} keypoints, task {task} has {spec.num_keypoints}",
        )
        return None
    if not os.path.isfile(image):
        report.add(location, "missing_image", f"image file not found: {image}")
        return None
    nan = valid & ~np.isfinite(kps).all(axis=1)
    if nan.any():
        report.add(location, "nan_keypoint", f"NaN or infinite keypoint(s) {np.flatnonzero(nan).tolist()} masked")
        report.masked_keypoints += int(nan.sum())
        valid = valid & ~nan
    if check_bounds:
        size = size or image_size(image)
        if size is None:
            report.add(location, "missing_image", f"cannot read image: {image}")
            return None
        width, height = size
        with np.errstate(invalid="ignore"):
            outside = valid & (
                (kps[:, 0] < 0) | (kps[:, 0] > width) | (kps[:, 1] < 0) | (kps[:, 1] > height)
            )
        if outside.any():
            report.add(
                location, "out_of_image",
                f"keypoint(s) {np.flatnonzero(outside).tolist()} outside the {width}x{height} "
                "image, masked",
            )
            report.masked_keypoints += int(outside.sum())
            valid = valid & ~outside
    if not valid.any():
        report.add(location, "no_valid_keypoints", "no valid keypoint left")
        return None
    kps = np.where(valid[:, None], kps, 0.0).astype(np.float32)  # no NaN reaches a loss
    return Record(image=image, task=task, keypoints=kps, valid=valid, **fields)


def task_for_stem(stem: str, tasks: Mapping[str, TaskSpec], task_map: Mapping[str, str] | None) -> str | None:
    """The task a CSV named ``stem`` holds: ``task_map`` first, then a case-insensitive
    match of the stem to a task name."""
    if task_map and stem in task_map:
        return task_map[stem]
    for name in tasks:
        if name.lower() == stem.lower():
            return name
    return None


def _pick_column(header: Sequence[str], wanted: str | None, candidates: Sequence[str]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        return lowered.index(wanted.lower()) if wanted.lower() in lowered else None
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    return None


def _keypoints(values: list, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """JSON ``[x, y]`` values (None: a missing point) -> ((K, 2) float32, NaN where missing;
    which are present), or ValueError naming the first that is not ``[x, y]``."""
    for value, name in zip(values, names):
        if value is not None and (not isinstance(value, list) or len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )):
            raise ValueError(f"{name} must be [x, y], got {value!r}")
    kps = np.array([(np.nan, np.nan) if v is None else v for v in values], np.float32).reshape(-1, 2)
    return kps, np.array([v is not None for v in values], bool)


def load_csv(
    path: str,
    *,
    task: str | None = None,
    tasks: Iterable[TaskSpec] | None = None,
    task_map: Mapping[str, str] | None = None,
    image_column: str | None = None,
    image_root: str | None = None,
    strict: bool = False,
    check_bounds: bool = True,
) -> Source:
    """One FM_UIA per-task CSV file (format in the module docstring)."""
    table = _task_table(tasks)
    name = os.path.basename(path)
    report = LoadReport(path, strict=strict)
    stem = os.path.splitext(name)[0]
    task = task or task_for_stem(stem, table, task_map)
    if task is None or task not in table:
        raise InputError(
            f"{path}: cannot tell the task of this CSV (file stem {stem!r}); known tasks: "
            f"{', '.join(table)}; pass a task or a task_map"
        )
    spec = table[task]
    records: list[Record] = []
    with _open_text(path, "CSV", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        layout = _CsvLayout.read(reader, path, image_column, image_root or os.path.dirname(os.path.abspath(path)))
        wrong_k = len(layout.points) != spec.num_keypoints
        n_rows = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # a NUL byte, a field over the size limit
                report.add(f"{path}:{reader.line_num}", "malformed", f"cannot parse row: {exc}")
                report.skipped += 1
                continue
            location = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            n_rows += 1
            if wrong_k:
                continue
            record = layout.record(row, location, spec, report, check_bounds)
            if record is None:
                report.skipped += 1
            else:
                records.append(record)
        if wrong_k and n_rows:
            report.add(
                path, "wrong_keypoint_count",
                f"{len(layout.points)} point_*_xy columns, task {task} has {spec.num_keypoints} "
                f"keypoints; all {n_rows} rows skipped",
            )
            report.skipped += n_rows
    report.loaded = len(records)
    return Source(records, report)


class _CsvLayout:
    """Which columns of a CSV hold what, and how one row becomes a record."""

    def __init__(self, header: list[str], image: int, spacing: int | None, points: list[int], root: str, name: str):
        self.header, self.image, self.spacing, self.points = header, image, spacing, points
        self.root, self.name = root, name  # where relative image paths start; the file's name (in record ids)

    @classmethod
    def read(cls, reader, path: str, image_column: str | None, root: str) -> "_CsvLayout":
        """The header row's layout (`InputError` when it has no image column)."""
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise InputError(f"{path}:1: cannot read the header row: {exc}") from None
        if header is None:
            raise InputError(f"{path}: empty CSV file (no header row)")
        if problem := _not_utf8(",".join(header)):
            raise InputError(f"{path}:1: header row is {problem}")
        image = _pick_column(header, image_column, IMAGE_COLUMN_CANDIDATES)
        if image is None:
            raise InputError(
                f"{path}: no image-path column"
                + (f" named {image_column!r}" if image_column else "")
                + f"; columns: {', '.join(header)}; pass image_column="
            )
        points = sorted((int(m.group(1)), i) for i, h in enumerate(header) if (m := POINT_COLUMN.match(h.strip())))
        spacing = _pick_column(header, None, SPACING_COLUMN_CANDIDATES)
        return cls(header, image, spacing, [i for _, i in points], root, os.path.basename(path))

    def record(self, row: list[str], location: str, spec: TaskSpec, report: LoadReport,
               check_bounds: bool) -> Record | None:
        """The row's record, or None after reporting why it is skipped."""
        if problem := _not_utf8(",".join(row)):
            report.add(location, "malformed", problem)
            return None
        if len(row) != len(self.header):
            report.add(location, "malformed", f"{len(row)} fields, header has {len(self.header)}")
            return None
        try:
            # an empty cell is a missing point (Python's json reads NaN too)
            kps, valid = _keypoints([json.loads(row[c]) if row[c].strip() else None for c in self.points],
                                    [self.header[c].strip() for c in self.points])
            spacing = None
            if self.spacing is not None and row[self.spacing].strip():
                spacing = _positive(row[self.spacing].strip(), self.header[self.spacing].strip())
        except ValueError as exc:
            report.add(location, "malformed", f"cannot parse row: {exc}")
            return None
        image_ref = row[self.image].strip()
        if not image_ref:
            report.add(location, "malformed", "empty image path")
            return None
        return _finish_record(
            image=_resolve(image_ref, self.root), task=spec.name, kps=kps, valid=valid,
            spec=spec, location=location, report=report, check_bounds=check_bounds,
            spacing_mm=spacing, source_id=f"{self.name}:{image_ref}",
        )


def load_csv_dir(
    directory: str,
    *,
    tasks: Iterable[TaskSpec] | None = None,
    task_map: Mapping[str, str] | None = None,
    image_column: str | None = None,
    strict: bool = False,
    check_bounds: bool = True,
) -> Source:
    """Every ``*.csv`` in ``directory`` (not recursive); the file stem names the task.

    A CSV whose stem maps to no task is reported and skipped (an error with ``strict``).
    """
    table = _task_table(tasks)
    try:
        names = sorted(n for n in os.listdir(directory) if n.lower().endswith(".csv"))
    except OSError as exc:
        raise InputError(f"cannot read folder {directory}: {exc.strerror}") from None
    if not names:
        raise InputError(f"no {MANIFEST_NAME} and no CSV files in {directory}")
    report = LoadReport(directory, strict=strict)
    parts = []
    for name in names:
        path = os.path.join(directory, name)
        stem = os.path.splitext(name)[0]
        task = task_for_stem(stem, table, task_map)
        if task is None or task not in table:
            report.add(path, "unknown_task", f"file stem {stem!r} names no task ({', '.join(table)})")
            continue
        parts.append(load_csv(path, task=task, tasks=table.values(), image_column=image_column, strict=strict,
                              check_bounds=check_bounds))
    for part in parts:
        report.merge(part.report)
    return Source([r for part in parts for r in part], report)


def _image_size_field(entry: dict) -> tuple[int, int]:
    """The manifest's ``width``/``height`` (both or neither): positive integers."""
    sides = []
    for key in ("width", "height"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            np.isfinite(value) and value > 0 and float(value).is_integer()
        ):
            raise ValueError(f"'width' and 'height' must both be positive integers, got {key} {value!r}")
        sides.append(int(value))
    return sides[0], sides[1]


def load_manifest(
    path: str,
    *,
    tasks: Iterable[TaskSpec] | None = None,
    strict: bool = False,
    check_bounds: bool = True,
) -> Source:
    """A JSONL manifest (format in the module docstring)."""
    table = _task_table(tasks)
    root = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    report = LoadReport(path, strict=strict)
    records: list[Record] = []
    with _open_text(path, "manifest", encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            location = f"{path}:{line_no}"
            try:
                entry = _ManifestEntry.parse(line)
            except (ValueError, TypeError) as exc:
                report.add(location, "malformed", f"cannot parse line: {exc}")
                report.skipped += 1
                continue
            record = entry.record(_resolve(entry.image, root), entry.id or f"{name}:{line_no}", location, table,
                                  report, check_bounds)
            if record is None:
                report.skipped += 1
            else:
                records.append(record)
    report.loaded = len(records)
    return Source(records, report)


class _ManifestEntry:
    """One manifest line's fields, checked for type and range."""

    @classmethod
    def parse(cls, line: str) -> "_ManifestEntry":
        """Raises ValueError or TypeError naming the field at fault."""
        if problem := _not_utf8(line):
            raise ValueError(problem)
        fields = json.loads(line)
        if not isinstance(fields, dict):
            raise ValueError("a line must be a JSON object")
        entry = cls()
        entry.image = fields.get("image")
        if not isinstance(entry.image, str) or not entry.image:
            raise ValueError("'image' must be a non-empty path string")
        entry.task = fields.get("task")
        if entry.task is not None and not isinstance(entry.task, str):
            raise ValueError(f"'task' must be a task name or null, got {entry.task!r}")
        entry.is_pseudo = fields.get("is_pseudo", False)
        if not isinstance(entry.is_pseudo, bool):
            raise ValueError(f"'is_pseudo' must be true or false, got {entry.is_pseudo!r}")
        entry.kps = entry.valid = None
        if fields.get("keypoints") is not None:
            points = fields["keypoints"]
            if not isinstance(points, list):
                raise ValueError("'keypoints' must be a list of [x, y]")
            entry.kps, entry.valid = _keypoints(points, [f"keypoint {i}" for i in range(len(points))])
            if "valid" in fields:
                given = fields["valid"]
                if not isinstance(given, list) or len(given) != len(entry.kps) or not all(
                    isinstance(v, bool) for v in given
                ):
                    raise ValueError(f"'valid' must be {len(entry.kps)} booleans")
                entry.valid = entry.valid & np.array(given, bool)
        spacing = fields.get("spacing_mm")
        entry.spacing = None if spacing is None else _positive(spacing, "spacing_mm")
        entry.confidence = fields.get("confidence")
        if entry.confidence is not None:
            entry.confidence = float(entry.confidence)
            if not np.isfinite(entry.confidence):
                raise ValueError(f"'confidence' must be a finite number, got {fields['confidence']!r}")
        entry.size = None
        if fields.get("width") is not None or fields.get("height") is not None:
            entry.size = _image_size_field(fields)
        entry.id = str(fields["id"]) if fields.get("id") else None
        return entry

    def record(self, image: str, source_id: str, location: str, table: Mapping[str, TaskSpec],
               report: LoadReport, check_bounds: bool) -> Record | None:
        """The line's record, or None after reporting why it is skipped."""
        fields = dict(is_pseudo=self.is_pseudo, spacing_mm=self.spacing, source_id=source_id,
                      confidence=self.confidence)
        if self.task is not None and self.task not in table:
            report.add(location, "unknown_task", f"task {self.task!r} is not one of {', '.join(table)}")
            return None
        if self.kps is None:
            if not os.path.isfile(image):
                report.add(location, "missing_image", f"image file not found: {image}")
                return None
            return Record(image=image, task=self.task, **fields)
        if self.task is None:
            report.add(location, "malformed", "keypoints given without a task")
            return None
        return _finish_record(image=image, task=self.task, kps=self.kps, valid=self.valid, spec=table[self.task],
                              location=location, report=report, check_bounds=check_bounds, size=self.size, **fields)


def manifest_line(record: Record, root: str | None = None, size: tuple[int, int] | None = None) -> str:
    """One manifest line for ``record`` (image path made relative to ``root`` if given).

    Pseudo-label writers use this too, so the format has one writer and one reader.
    """
    if not isinstance(record.image, str):
        raise InputError(f"record {record.source_id!r}: only records with an image path can be written")
    image = os.path.relpath(record.image, root) if root else record.image
    entry: dict[str, Any] = {"image": image.replace(os.sep, "/"), "task": record.task}
    if record.keypoints is not None:
        entry["keypoints"] = [
            [round(float(x), 3), round(float(y), 3)] if ok else None
            for (x, y), ok in zip(record.keypoints, record.valid)
        ]
    if record.is_pseudo:
        entry["is_pseudo"] = True
    if record.spacing_mm is not None:
        entry["spacing_mm"] = record.spacing_mm
    if record.confidence is not None:
        entry["confidence"] = record.confidence
    if record.source_id:
        entry["id"] = record.source_id
    if size is not None:
        entry["width"], entry["height"] = int(size[0]), int(size[1])
    return json.dumps(entry)


def load_frames(root: str, *, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Source:
    """Every image file below ``root`` as an unlabelled record (`find_images` order), or
    the records of the pack ``root`` is."""
    if is_pack(root):
        return Source(*load_pack(root))
    if not os.path.isdir(root):
        raise InputError(f"frame folder {root} is a file, not a folder" if os.path.isfile(root)
                         else f"frame folder not found: {root}")
    paths = find_images(root, extensions)
    if not paths:
        raise InputError(f"no image files ({', '.join(extensions)}) under {root}")
    report = LoadReport(root, loaded=len(paths))
    records = [Record(image=p, task=None, source_id=os.path.relpath(p, root)) for p in paths]
    return Source(records, report)


def load_source(
    spec: str | os.PathLike,
    *,
    tasks: Iterable[TaskSpec] | None = None,
    task_map: Mapping[str, str] | None = None,
    image_column: str | None = None,
    strict: bool = False,
    check_bounds: bool = True,
    log: Callable[[str], None] | None = lambda message: print(message, file=sys.stderr),
) -> Source:
    """A ``.jsonl`` manifest, a ``.csv`` file, or a directory (a pack, its ``manifest.jsonl``
    if it has one, else its CSV files). The load summary goes to ``log`` (stderr by default;
    None to stay quiet)."""
    spec = os.fspath(spec)
    options = dict(tasks=tuple(_task_table(tasks).values()), strict=strict, check_bounds=check_bounds)
    csv_options = dict(options, task_map=task_map, image_column=image_column)
    if os.path.isdir(spec):
        manifest = os.path.join(spec, MANIFEST_NAME)
        if is_pack(spec):
            source = Source(*load_pack(spec))
        elif os.path.isfile(manifest):
            source = load_manifest(manifest, **options)
        else:
            source = load_csv_dir(spec, **csv_options)
    elif not os.path.exists(spec):
        raise InputError(f"data not found: {spec}")
    elif spec.lower().endswith(".jsonl"):
        source = load_manifest(spec, **options)
    elif spec.lower().endswith(".csv"):
        source = load_csv(spec, **csv_options)
    else:
        raise InputError(f"{spec}: expected a .jsonl manifest, a .csv file or a directory of CSVs")
    if log is not None:
        log(source.report.summary())
    return source

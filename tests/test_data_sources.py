"""Sources: FM_UIA CSV, CSV folders, JSONL manifests, frame folders, and every bad-input
path (reported with file and line, counted, strict mode raises)."""

import json
import os

import cv2
import numpy as np
import pytest

from sonichu_jax.data.imagesize import image_size
from sonichu_jax.data.sources import load_csv, load_csv_dir, load_frames, load_manifest, load_source, manifest_line
from sonichu_jax.errors import InputError


def _png(path, w=40, h=30, dtype=np.uint8):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.zeros((h, w), dtype))
    return path


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(text)
    return path


@pytest.fixture
def images(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _png(str(tmp_path / "img" / name))
    return tmp_path


def test_image_size_from_headers(tmp_path):
    arr = np.zeros((30, 40, 3), np.uint8)
    for ext in ("png", "jpg", "bmp", "tif"):
        path = str(tmp_path / f"x.{ext}")
        cv2.imwrite(path, arr)
        assert image_size(path) == (40, 30), ext
    assert image_size(str(tmp_path / "missing.png")) is None


def test_csv_reads_points_in_column_order(images):
    csv_path = _write(
        images / "fetal_femur.csv",
        'filename,point_2_xy,point_1_xy,spacing_mm\n'
        'img/a.png,"[30, 20]","[1.5, 2.5]",0.2\n'
        'img/b.png,"[40, 30]","[0, 0]",\n',
    )
    src = load_csv(str(csv_path))
    assert len(src) == 2 and src.report.skipped == 0 and not src.report.issues
    r = src[0]
    assert r.task == "fetal_femur"
    np.testing.assert_allclose(r.keypoints, [[1.5, 2.5], [30, 20]])  # point_1 before point_2
    assert r.valid.tolist() == [True, True]
    assert r.spacing_mm == pytest.approx(0.2) and src[1].spacing_mm is None
    assert r.image == os.path.normpath(str(images / "img" / "a.png"))
    # a point exactly on the right/bottom edge is inside the continuous frame
    np.testing.assert_allclose(src[1].keypoints[1], [40, 30])


def test_csv_bad_rows_are_reported_with_line_numbers(images):
    csv_path = _write(
        images / "FUGC.csv",
        "image,point_1_xy,point_2_xy\n"
        'img/a.png,"[1, 2]","[3, 4]"\n'  # line 2: fine
        'img/b.png,"[1, 2]","oops"\n'  # line 3: malformed cell
        'img/c.png,"[1, 2]"\n'  # line 4: wrong field count
        'img/missing.png,"[1, 2]","[3, 4]"\n'  # line 5: missing file
        'img/b.png,"[NaN, 2]","[3, 4]"\n'  # line 6: NaN -> masked
        'img/c.png,"[100, 2]","[3, 4]"\n',  # line 7: outside the 40x30 image -> masked
    )
    src = load_csv(str(csv_path))
    report = src.report
    assert len(src) == 3 and report.loaded == 3 and report.skipped == 3
    by_kind = {}
    for issue in report.issues:
        by_kind.setdefault(issue.kind, issue)
    assert by_kind["malformed"].location.endswith("FUGC.csv:3")
    assert any(i.location.endswith("FUGC.csv:4") and i.kind == "malformed" for i in report.issues)
    assert by_kind["missing_image"].location.endswith("FUGC.csv:5")
    assert by_kind["nan_keypoint"].location.endswith("FUGC.csv:6")
    assert by_kind["out_of_image"].location.endswith("FUGC.csv:7")
    assert report.masked_keypoints == 2
    assert src[1].valid.tolist() == [False, True] and np.isfinite(src[1].keypoints).all()
    assert src[2].valid.tolist() == [False, True]
    summary = report.summary()
    assert "loaded 3" in summary and "skipped 3" in summary and "FUGC.csv:3" in summary


def test_csv_wrong_keypoint_count_skips_every_row(images):
    csv_path = _write(images / "HC.csv", 'image,point_1_xy,point_2_xy\nimg/a.png,"[1, 2]","[3, 4]"\n')
    src = load_csv(str(csv_path))
    assert len(src) == 0 and src.report.skipped == 1
    (issue,) = src.report.issues
    assert issue.kind == "wrong_keypoint_count" and "HC has 4" in issue.message
    with pytest.raises(InputError, match="HC.csv"):
        load_csv(str(csv_path), strict=True)


@pytest.mark.parametrize("line", ['img/b.png,"[1, 2]","oops"', 'img/missing.png,"[1, 2]","[3, 4]"', 'img/a.png,"[NaN, 2]","[3, 4]"'])
def test_csv_strict_raises_naming_file_and_line(images, line):
    csv_path = _write(images / "FUGC.csv", f'image,point_1_xy,point_2_xy\nimg/a.png,"[1, 2]","[3, 4]"\n{line}\n')
    assert len(load_csv(str(csv_path))) >= 1
    with pytest.raises(InputError, match=r"FUGC\.csv:3"):
        load_csv(str(csv_path), strict=True)


def test_csv_image_column_and_task_mapping(images):
    csv_path = _write(images / "femur_val.csv", 'frame,point_0_xy,point_1_xy\nimg/a.png,"[1, 2]","[3, 4]"\n')
    with pytest.raises(InputError, match="task"):
        load_csv(str(csv_path))
    with pytest.raises(InputError, match="image-path column"):
        load_csv(str(csv_path), task="fetal_femur")
    src = load_csv(str(csv_path), task_map={"femur_val": "fetal_femur"}, image_column="frame")
    assert len(src) == 1 and src[0].task == "fetal_femur"


def test_csv_dir_maps_stems_and_reports_unknown_files(images):
    _write(images / "ivc.csv", 'image,point_1_xy,point_2_xy\nimg/a.png,"[1, 2]","[3, 4]"\n')
    _write(images / "notes.csv", "image\nimg/a.png\n")
    src = load_csv_dir(str(images))
    assert len(src) == 1 and src[0].task == "IVC"
    assert [i.kind for i in src.report.issues] == ["unknown_task"]
    with pytest.raises(InputError, match="notes.csv"):
        load_csv_dir(str(images), strict=True)


def test_manifest_round_trip_and_fields(images):
    lines = [
        json.dumps({"image": "img/a.png", "task": "FUGC", "keypoints": [[1, 2], None], "is_pseudo": True,
                    "spacing_mm": 0.1, "id": "x1", "confidence": 0.5}),
        "",
        json.dumps({"image": "img/b.png", "task": None}),
        json.dumps({"image": "img/c.png", "task": "FUGC", "keypoints": [[1, 2], [3, 4]], "valid": [True, False]}),
    ]
    path = _write(images / "m.jsonl", "\n".join(lines) + "\n")
    src = load_manifest(str(path))
    assert len(src) == 3 and not src.report.issues
    a, b, c = src
    assert a.is_pseudo and a.spacing_mm == 0.1 and a.source_id == "x1" and a.confidence == 0.5
    assert a.valid.tolist() == [True, False]
    assert b.keypoints is None and b.task is None and not b.has_label
    assert c.valid.tolist() == [True, False] and c.source_id == "m.jsonl:4"
    # the writer produces what the reader reads
    again = _write(images / "again.jsonl", "\n".join(manifest_line(r, root=str(images)) for r in src) + "\n")
    back = load_manifest(str(again))
    for r1, r2 in zip(src, back):
        assert (r1.image, r1.task, r1.is_pseudo, r1.source_id) == (r2.image, r2.task, r2.is_pseudo, r2.source_id)
        if r1.has_label:
            np.testing.assert_allclose(r1.keypoints[r1.valid], r2.keypoints[r2.valid])
            assert r1.valid.tolist() == r2.valid.tolist()


def test_manifest_bad_lines(images):
    lines = [
        '{"image": "img/a.png", "task": "FUGC", "keypoints": [[1, 2], [3, 4]]}',
        '{"image": "img/a.png", "task": "FUGC", "keypoints": [[1, 2], [3, 4]]',  # 2: broken JSON
        '{"image": "img/a.png", "task": "HC", "keypoints": [[1, 2], [3, 4]]}',  # 3: wrong K
        '{"image": "img/a.png", "task": "LIVER", "keypoints": [[1, 2]]}',  # 4: unknown task
        '{"image": "img/zz.png", "task": "FUGC", "keypoints": [[1, 2], [3, 4]]}',  # 5: missing
        '{"image": "img/a.png", "task": "FUGC", "keypoints": [[NaN, 2], [3, 4]]}',  # 6: NaN
        '{"image": "img/a.png", "task": "FUGC", "keypoints": [[-1, 2], [3, 4]], "width": 40, "height": 30}',  # 7
        '{"image": "img/a.png", "task": "FUGC", "keypoints": [[NaN, 2], [NaN, 4]]}',  # 8: nothing left
        '[1, 2]',  # 9: not an object
    ]
    path = _write(images / "bad.jsonl", "\n".join(lines) + "\n")
    src = load_manifest(str(path))
    kinds = {int(i.location.rsplit(":", 1)[1]): i.kind for i in src.report.issues}
    assert kinds[2] == "malformed" and kinds[3] == "wrong_keypoint_count" and kinds[4] == "unknown_task"
    assert kinds[5] == "missing_image" and kinds[6] == "nan_keypoint" and kinds[7] == "out_of_image"
    assert kinds[8] == "no_valid_keypoints" and kinds[9] == "malformed"
    assert src.report.loaded == 3 and src.report.skipped == 6
    with pytest.raises(InputError, match=r"bad\.jsonl:2"):
        load_manifest(str(path), strict=True)


def test_frames_recursive_8_and_16_bit(tmp_path):
    _png(str(tmp_path / "f" / "b" / "x.png"), dtype=np.uint16)
    _png(str(tmp_path / "f" / "a.jpg"))
    _png(str(tmp_path / "f" / "c.tiff"))
    _write(tmp_path / "f" / "notes.txt", "hi")
    src = load_frames(str(tmp_path / "f"))
    assert [r.source_id for r in src] == ["a.jpg", "c.tiff", os.path.join("b", "x.png")]
    assert all(r.keypoints is None and r.task is None for r in src)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(InputError, match="no image files"):
        load_frames(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="not found"):
        load_frames(str(tmp_path / "nonexistent"))


def test_load_source_dispatch(images, capsys):
    _write(images / "FUGC.csv", 'image,point_1_xy,point_2_xy\nimg/a.png,"[1, 2]","[3, 4]"\n')
    assert len(load_source(str(images / "FUGC.csv"))) == 1
    assert len(load_source(str(images))) == 1  # a folder of CSVs
    assert "loaded 1 records, skipped 0" in capsys.readouterr().err
    _write(images / "manifest.jsonl", '{"image": "img/a.png", "task": null}\n{"image": "img/b.png", "task": null}\n')
    assert len(load_source(str(images), log=None)) == 2  # the folder's manifest wins
    with pytest.raises(InputError, match="not found"):
        load_source(str(images / "nope.jsonl"))
    with pytest.raises(InputError, match="expected"):
        load_source(str(images / "img" / "a.png"))


# -- text that is not UTF-8, and field values of the wrong type ------------------------------

_LATIN1_CSV = 'image,point_1_xy,point_2_xy\nimg/a.png,"[1, 2]","[3, 4]"\nimg/caf\xe9.png,"[1, 2]","[3, 4]"\n'


def test_csv_row_that_is_not_utf8_is_a_reported_malformed_record(images):
    path = images / "FUGC.csv"
    path.write_bytes(_LATIN1_CSV.encode("latin-1"))
    src = load_csv(str(path))
    assert len(src) == 1 and src.report.skipped == 1
    (issue,) = src.report.issues
    assert issue.kind == "malformed" and issue.location == f"{path}:3"
    assert "not UTF-8" in issue.message and "0xE9" in issue.message
    with pytest.raises(InputError, match=r"FUGC\.csv:3: not UTF-8"):
        load_csv(str(path), strict=True)


def test_csv_header_that_is_not_utf8_names_the_file(images):
    path = images / "FUGC.csv"
    path.write_bytes("imag\xe9,point_1_xy,point_2_xy\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"FUGC\.csv:1: header row is not UTF-8 text \(byte 0xE9\)"):
        load_csv(str(path))
    path.write_bytes("image,point_1_xy,point_2_xy\n".encode("utf-16"))  # a BOM, then NUL bytes
    with pytest.raises(InputError, match=r"FUGC\.csv:1: header row is not UTF-8"):
        load_csv(str(path))


def test_manifest_line_that_is_not_utf8_is_a_reported_malformed_record(images):
    lines = ['{"image": "img/a.png", "task": null}', '{"image": "img/caf\xe9.png", "task": null}']
    path = images / "m.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    src = load_manifest(str(path))
    assert len(src) == 1 and src.report.skipped == 1
    (issue,) = src.report.issues
    assert issue.location == f"{path}:2" and issue.kind == "malformed" and "not UTF-8" in issue.message
    path.write_bytes(b"\xef\xbb\xbf" + lines[0].encode() + b"\n")  # a UTF-8 byte-order mark is fine
    assert len(load_manifest(str(path))) == 1


def test_not_utf8_data_from_the_cli_is_one_line(images, tmp_path, capsys):
    from sonichu_jax.cli import main
    from sonichu_jax.config import tiny_config

    model = str(tmp_path / "model")
    tiny_config().save(model)  # the data is read before any weights
    path = images / "FUGC.csv"
    path.write_bytes(_LATIN1_CSV.encode("latin-1"))
    assert main(["evaluate", "--model", model, "--data", str(path), "--strict", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:3" in err[0] and "not UTF-8" in err[0], err
    path.write_bytes(_LATIN1_CSV.replace("image", "imag\xe9").encode("latin-1"))
    assert main(["evaluate", "--model", model, "--data", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:1" in err[0], err


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"task": ["FUGC"]}, "'task' must be a task name or null"),
        ({"is_pseudo": "no"}, "'is_pseudo' must be true or false, got 'no'"),
        ({"width": 1e400, "height": 30}, "must both be positive integers, got width inf"),
        ({"width": -40, "height": 30}, "got width -40"),
        ({"width": 40}, "got height None"),
        ({"width": 40.5, "height": 30}, "got width 40.5"),
        ({"spacing_mm": -0.1}, "'spacing_mm' must be a positive number, got -0.1"),
        ({"spacing_mm": "thin"}, "'spacing_mm' must be a positive number, got 'thin'"),
        ({"confidence": float("nan")}, "'confidence' must be a finite number"),
    ],
)
def test_manifest_field_types(images, fields, message):
    entry = {"image": "img/a.png", "task": "FUGC", "keypoints": [[1, 2], [3, 4]], **fields}
    path = _write(images / "m.jsonl", json.dumps(entry) + "\n")
    src = load_manifest(str(path))
    assert len(src) == 0 and src.report.skipped == 1
    (issue,) = src.report.issues
    assert issue.kind == "malformed" and message in issue.message, issue.message


def test_csv_spacing_must_be_positive(images):
    path = _write(images / "FUGC.csv", 'image,point_1_xy,point_2_xy,spacing_mm\nimg/a.png,"[1, 2]","[3, 4]",-2\n'
                  'img/b.png,"[1, 2]","[3, 4]",nan\nimg/c.png,"[1, 2]","[3, 4]",0.1\n')
    src = load_csv(str(path))
    assert len(src) == 1 and src[0].spacing_mm == pytest.approx(0.1)
    assert [i.location.rsplit(":", 1)[1] for i in src.report.issues] == ["2", "3"]
    assert all("spacing_mm" in i.message for i in src.report.issues)


def test_csv_row_the_csv_module_cannot_parse_is_reported(images):
    """A field over the csv module's size limit raised _csv.Error out of the loader."""
    path = _write(images / "FUGC.csv", 'image,point_1_xy,point_2_xy\nimg/a.png,"[1, 2]","[3, 4]"\n'
                  'img/b.png,"' + "x" * 200_000 + '","[3, 4]"\nimg/c.png,"[1, 2]","[3, 4]"\n')
    src = load_csv(str(path))
    assert len(src) == 2 and src.report.skipped == 1
    (issue,) = src.report.issues
    assert issue.kind == "malformed" and issue.location == f"{path}:3" and "field limit" in issue.message

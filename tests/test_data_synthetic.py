"""Synthetic B-mode generator: determinism, documented keypoint order, flip permutations,
difficulty, and the on-disk data set."""

import os

import cv2
import numpy as np
import pytest

from sonichu_jax.config import CARD_TASKS
from sonichu_jax.data import synthetic
from sonichu_jax.data.augment import AugmentConfig, augment_sample
from sonichu_jax.data.sources import load_csv_dir, load_source
from sonichu_jax.data.synthetic import SYNTHETIC_FLIP_PERMS, TASK_NAMES, generate_sample, synthetic_tasks, write_synthetic_dataset
from sonichu_jax.errors import InputError

SIZE = 128


def _order_holds(task, k):
    """The keypoint order documented in `sonichu_jax.data.synthetic`, as predicates."""
    if task in ("HC", "FA"):
        return k[0, 0] < k[1, 0] and k[2, 1] < k[3, 1]
    if task in ("fetal_femur", "FUGC"):
        return k[0, 0] < k[1, 0]
    if task == "AOP":
        return k[0, 1] < k[1, 1] and np.linalg.norm(k[2] - k[1]) < np.linalg.norm(k[3] - k[1])
    if task == "IVC":
        return k[0, 1] < k[1, 1]
    if task == "PSAX":
        return k[1, 1] < k[3, 1]
    if task == "PLAX":  # LV anterior wall (1-4) above the posterior wall (6-9), aorta walls likewise
        return k[1:5, 1].mean() < k[6:10, 1].mean() and (k[10:13, 1] < k[13:16, 1]).all()
    if task == "A4C":  # each chamber's apex-side point above its base-side point; LV wider than RV
        tops_above = all(k[4 * c, 1] < k[4 * c + 2, 1] for c in range(4))
        return tops_above and np.linalg.norm(k[1] - k[3]) > np.linalg.norm(k[5] - k[7])
    raise AssertionError(task)


def test_tasks_and_flip_perms_match_the_card():
    specs = synthetic_tasks()
    assert [s.name for s in specs] == [t.name for t in CARD_TASKS]
    for spec, card in zip(specs, CARD_TASKS):
        assert spec.num_keypoints == card.num_keypoints
        perm = np.array(SYNTHETIC_FLIP_PERMS[spec.name])
        assert (perm[perm] == np.arange(len(perm))).all()  # a mirror is an involution
    with pytest.raises(InputError, match="LIVER"):
        synthetic_tasks(["LIVER"])


@pytest.mark.parametrize("task", TASK_NAMES)
def test_sample_shapes_order_and_determinism(task):
    k_expected = dict((t.name, t.num_keypoints) for t in CARD_TASKS)[task]
    for i in range(6):
        img, kps = generate_sample(task, i, seed=3, size=SIZE)
        assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8
        assert kps.shape == (k_expected, 2) and kps.dtype == np.float32
        assert (kps > 0).all() and (kps < SIZE).all()
        assert _order_holds(task, kps), (task, i, kps)
        assert img.std() > 10  # not blank
    a = generate_sample(task, 4, seed=3, size=SIZE)
    b = generate_sample(task, 4, seed=3, size=SIZE)
    c = generate_sample(task, 4, seed=4, size=SIZE)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("task", TASK_NAMES)
def test_flip_with_perm_keeps_the_documented_order(task):
    flip = AugmentConfig(
        scale=(1.0, 1.0), rotation_deg=0.0, translate=0.0, flip_prob=1.0, gamma=(1.0, 1.0),
        contrast=(1.0, 1.0), brightness=0.0, noise_prob=0.0, blur_prob=0.0,
    )
    for i in range(4):
        img, kps = generate_sample(task, i, seed=0, size=SIZE)
        _, out, ok = augment_sample(
            img, kps, np.ones(len(kps), bool), np.random.default_rng(i), flip, (SIZE, SIZE), SYNTHETIC_FLIP_PERMS[task]
        )
        assert ok.all()
        np.testing.assert_allclose(np.sort(out[:, 0]), np.sort(SIZE - kps[:, 0]), atol=1e-4)
        assert _order_holds(task, out), (task, i)


def test_anatomy_is_drawn_at_the_keypoints():
    """The femur is drawn between its end points: the pixels halfway between them are
    much brighter than the sector on average."""
    gains = []
    for i in range(10):
        img, kps = generate_sample("fetal_femur", i, seed=1, size=SIZE)
        mid = (kps[0] + kps[1]) / 2
        x, y = int(mid[0]), int(mid[1])
        gains.append(img[y - 1 : y + 2, x - 1 : x + 2].mean() - img[img > 0].mean())
    assert np.median(gains) > 40


def test_mean_keypoint_guess_is_far_off():
    for task in TASK_NAMES:
        kps = np.stack([generate_sample(task, i, seed=0, size=SIZE)[1] for i in range(24)])
        guess = kps.mean(axis=0)
        mre = np.linalg.norm(kps - guess, axis=-1).mean()
        assert mre > 0.05 * SIZE, (task, mre)  # >= 12.8 px at 256; a trained model gets a few px


def test_write_dataset_manifest_and_csv(tmp_path):
    out = str(tmp_path / "syn")
    ticks = []
    write_synthetic_dataset(out, 2, tasks=["HC", "IVC"], seed=7, size=64, csv=True, progress=ticks.append)
    assert sum(ticks) == 4
    assert sorted(os.listdir(out)) == ["HC.csv", "IVC.csv", "images", "manifest.jsonl"]
    src = load_source(out, log=None)
    assert len(src) == 4 and not src.report.issues
    for record in src:
        index = int(record.source_id.rsplit("_", 1)[1])
        img, kps = generate_sample(record.task, index, seed=7, size=64)
        np.testing.assert_allclose(record.keypoints, kps, atol=1e-3)
        np.testing.assert_array_equal(cv2.imread(record.image, cv2.IMREAD_UNCHANGED), img)
    from_csv = load_csv_dir(out)
    assert len(from_csv) == 4 and not from_csv.report.issues
    np.testing.assert_allclose(from_csv[0].keypoints, src[0].keypoints, atol=1e-3)
    # same seed, same bytes
    again = str(tmp_path / "again")
    write_synthetic_dataset(again, 2, tasks=["HC", "IVC"], seed=7, size=64)
    with open(os.path.join(out, "manifest.jsonl")) as a, open(os.path.join(again, "manifest.jsonl")) as b:
        assert a.read().replace(out, "") == b.read().replace(again, "")
    with pytest.raises(InputError, match="not empty"):
        write_synthetic_dataset(out, 1, tasks=["HC"], size=64)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(task, index, seed=0, size=256, acquisition=None):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return generate_sample(task, index, seed, size, acquisition)

    monkeypatch.setattr(synthetic, "generate_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(str(tmp_path / "syn"), 5, tasks=["HC"], size=64)
    assert os.listdir(tmp_path) == []

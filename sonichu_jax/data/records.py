"""One labelled (or unlabelled) image, and the report a source keeps while loading.

Coordinate convention (used by every source, the augmentation and the metrics):
keypoints are ``(x, y)`` in the image's *continuous* pixel frame: 0 is the left/top edge
of the image, ``W``/``H`` the right/bottom edge, and the centre of pixel ``i`` is at
``i + 0.5``. The model predicts normalised ``xy = pixel / (orig_w, orig_h)``, so a plain
resize maps keypoints by a pure scale, with no half-pixel shift.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from sonichu_jax.errors import InputError


@dataclass
class Record:
    """An image (a path or an array) with its task and, when labelled, its keypoints.

    ``keypoints`` is float32 ``(K, 2)`` in original pixels, or ``None`` for unlabelled
    frames; ``valid`` is bool ``(K,)`` (a masked keypoint is kept in the array but must
    not contribute to losses or metrics). ``task`` is ``None`` only for unlabelled frames
    that belong to no task (I-JEPA pretraining).
    """

    image: str | np.ndarray
    task: str | None
    keypoints: np.ndarray | None = None
    valid: np.ndarray | None = None
    is_pseudo: bool = False
    spacing_mm: float | None = None
    source_id: str = ""
    confidence: float | None = None

    def __post_init__(self):
        if self.keypoints is None:
            self.valid = None
            return
        kps = np.asarray(self.keypoints, dtype=np.float32)
        if kps.ndim != 2 or kps.shape[1] != 2:
            raise ValueError(f"record {self.source_id!r}: keypoints must be (K, 2), got {kps.shape}")
        self.keypoints = kps
        if self.valid is None:
            self.valid = np.isfinite(kps).all(axis=1)
        else:
            valid = np.asarray(self.valid, dtype=bool)
            if valid.shape != (kps.shape[0],):
                raise ValueError(
                    f"record {self.source_id!r}: valid must be ({kps.shape[0]},), got {valid.shape}"
                )
            self.valid = valid

    @property
    def has_label(self) -> bool:
        return self.keypoints is not None


# Kinds of problems a source reports. A record with one of SKIP_KINDS is left out; the
# others mask the offending keypoints and keep the record.
SKIP_KINDS = ("malformed", "wrong_keypoint_count", "unknown_task", "missing_image", "no_valid_keypoints")
MASK_KINDS = ("nan_keypoint", "out_of_image")


@dataclass(frozen=True)
class Issue:
    location: str  # "file:line" or a path
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass
class LoadReport:
    """What a source loaded and what it skipped or masked, and where.

    With ``strict=True`` the first issue raises `InputError` instead of being recorded.
    """

    name: str
    strict: bool = False
    loaded: int = 0
    skipped: int = 0
    masked_keypoints: int = 0
    issues: list[Issue] = field(default_factory=list)

    def add(self, location: str, kind: str, message: str) -> None:
        if kind not in SKIP_KINDS and kind not in MASK_KINDS:
            raise ValueError(f"unknown issue kind {kind!r}")
        issue = Issue(location, kind, message)
        if self.strict:
            raise InputError(f"{issue} (strict mode)")
        self.issues.append(issue)

    def merge(self, other: "LoadReport") -> None:
        self.loaded += other.loaded
        self.skipped += other.skipped
        self.masked_keypoints += other.masked_keypoints
        self.issues.extend(other.issues)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(i.kind for i in self.issues).items()))

    def summary(self, max_issues: int = 10) -> str:
        """A few lines: totals, counts per kind, then the first ``max_issues`` issues."""
        line = f"{self.name}: loaded {self.loaded} records, skipped {self.skipped}"
        if self.masked_keypoints:
            line += f", masked {self.masked_keypoints} keypoints"
        lines = [line]
        counts = self.counts()
        if counts:
            lines.append("  issues: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for issue in self.issues[:max_issues]:
            lines.append(f"  {issue}")
        if len(self.issues) > max_issues:
            lines.append(f"  ... and {len(self.issues) - max_issues} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "loaded": self.loaded,
            "skipped": self.skipped,
            "masked_keypoints": self.masked_keypoints,
            "issue_counts": self.counts(),
            "issues": [dataclasses.asdict(i) for i in self.issues],
        }

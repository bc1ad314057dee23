"""Packed data sets (`sonichu-jax pack`): ``shard-NNNNN.array_record`` files, one item a
group so any one reads alone, and ``pack.json`` with every record's labels, so loading
a pack reads no image. Each item: a 4-byte little-endian header length, the record as
JSON, then the frame file's bytes (``encoded``) or its decoded pixels (``decoded``)."""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Sequence

import cv2
import numpy as np

from sonichu_jax.data.records import LoadReport, Record
from sonichu_jax.errors import InputError
from sonichu_jax.preprocess import decode_image, load_image

PACK_INDEX = "pack.json"
FORMAT = "sonichu-jax pack 1"
STORES = ("encoded", "decoded")


class PackedImage:
    """A record's image inside a pack: ``read()`` gives the array (what `load_image` calls);
    ``str()`` names it ``PACK#ITEM`` in messages."""

    def __init__(self, shards, index: int, name: str):
        self.shards, self.index, self.name = shards, index, name

    def read(self) -> np.ndarray:
        item = self.shards[self.index]
        (n,) = struct.unpack_from("<I", item)
        header = json.loads(item[4 : 4 + n])
        payload = memoryview(item)[4 + n :]
        if header["store"] == "encoded":
            return decode_image(payload, str(self))
        return np.frombuffer(payload, header["dtype"]).reshape(header["shape"])

    def __str__(self) -> str:
        return self.name


def _record_fields(record: Record) -> dict:
    """The JSON form of a record's labels (the image itself goes in the shard)."""
    out = {"id": record.source_id, "task": record.task, "is_pseudo": record.is_pseudo,
           "spacing_mm": record.spacing_mm, "confidence": record.confidence}
    if record.keypoints is not None:
        out["keypoints"] = record.keypoints.tolist()
        out["valid"] = record.valid.tolist()
    return out


def write_pack(records: Sequence[Record], out: str, *, store: str = "decoded", shard_size: int = 4096,
               progress: Callable[[int], None] | None = None, warn: Callable[[str], None] | None = None) -> dict:
    """Write ``records`` as a pack into the empty folder ``out`` (the caller makes it atomic).

    A frame that cannot be read is reported through ``warn`` and skipped; returns the
    ``pack.json`` contents plus ``skipped`` (how many were)."""
    from array_record.python.array_record_module import ArrayRecordWriter  # only packs need it: sources stay light

    if store not in STORES:
        raise InputError(f"store must be one of {STORES}, got {store!r}")
    shards, index, skipped, writer = [], [], 0, None
    for record in records:
        try:
            data = image = None
            if store == "encoded" and isinstance(record.image, str):
                with open(record.image, "rb") as fh:
                    data = fh.read()
                image = decode_image(data, record.image)  # checked now, not at training time
            else:
                image = load_image(record.image)
        except (InputError, OSError, cv2.error) as exc:
            skipped += 1
            (warn or print)(f"skipping a frame that cannot be read: {record.image} ({exc})")
            continue
        finally:
            if progress is not None:
                progress(1)
        fields = _record_fields(record)
        header = {**fields, "store": store}
        if store == "encoded":
            if data is None:  # an array or a packed frame: encode it losslessly
                bgr = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}.get(image.shape[2] if image.ndim == 3 else 1)
                data = cv2.imencode(".png", image if bgr is None else cv2.cvtColor(image, bgr))[1].tobytes()
        else:
            header.update(dtype=image.dtype.str, shape=list(image.shape))
            data = np.ascontiguousarray(image).tobytes()
        head = json.dumps(header).encode()
        if writer is None or shards[-1]["records"] == shard_size:
            if writer is not None:
                writer.close()
            shards.append({"file": f"shard-{len(shards):05d}.array_record", "records": 0})
            # zstd (the default) saves a third on decoded pixels; PNG bytes are compressed already
            writer = ArrayRecordWriter(os.path.join(out, shards[-1]["file"]),
                                       "group_size:1" + (",uncompressed" if store == "encoded" else ""))
        writer.write(struct.pack("<I", len(head)) + head + data)
        shards[-1]["records"] += 1
        index.append({**fields, "width": int(image.shape[1]), "height": int(image.shape[0])})
    if writer is not None:
        writer.close()
    if not index:
        raise InputError(f"no readable frame among the {len(records)} records; nothing to pack")
    meta = {"format": FORMAT, "store": store, "shards": shards, "records": index}
    with open(os.path.join(out, PACK_INDEX), "w") as fh:
        json.dump(meta, fh)
    return {**meta, "skipped": skipped}


def is_pack(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PACK_INDEX))


def load_pack(root: str) -> tuple[list[Record], LoadReport]:
    """A pack's records, whose images read from the shards, and its load report
    (`sonichu_jax.data.sources` wraps them as a `Source`).

    A shard that is missing, truncated or damaged raises `InputError` naming it."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource  # as in write_pack
    from array_record.python.array_record_module import ArrayRecordReader

    path = os.path.join(root, PACK_INDEX)
    try:
        with open(path) as fh:
            meta = json.load(fh)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        shards = [(os.path.join(root, s["file"]), int(s["records"])) for s in meta["shards"]]
        entries = meta["records"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a readable pack index ({exc})") from None
    for file, count in shards:
        found = None
        if os.path.isfile(file):
            try:
                reader = ArrayRecordReader(file)
                found = reader.num_records()
                reader.close()  # a count only: the data source below opens the shards for reading
            except Exception:  # the reader's own errors carry no type of their own
                pass
        if found != count:
            state = "missing" if found is None else f"truncated or damaged ({found} of {count} records)"
            raise InputError(f"pack shard {file} is {state}; pack the data again")
    if sum(c for _, c in shards) != len(entries):
        raise InputError(f"{path}: lists {len(entries)} records but its shards hold {sum(c for _, c in shards)}")
    data = ArrayRecordDataSource([f for f, _ in shards])
    records = [
        Record(image=PackedImage(data, i, f"{root}#{i}"), task=e["task"], keypoints=e.get("keypoints"),
               valid=e.get("valid"), is_pseudo=e["is_pseudo"], spacing_mm=e["spacing_mm"], source_id=e["id"],
               confidence=e["confidence"])
        for i, e in enumerate(entries)
    ]
    return records, LoadReport(root, loaded=len(records))

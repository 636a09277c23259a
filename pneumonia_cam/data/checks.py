"""Data checks as plain functions: what each image is (readable? size, bit depth, perceptual hash), which
images repeat across splits, and a report. The data module runs them before training (the scan is cached by
file size and mtime, so a rerun decodes nothing); `python src/inspect_data.py data=...` runs them alone."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pneumonia_cam.data.errors import ImageReadError
from pneumonia_cam.data.image_io import read_header

HASH_SIDE = 16  # difference hash of a 17 x 16 thumbnail: 256 bits, robust to resizing and re-encoding
FACT_COLUMNS = ["path", "problem", "height", "width", "bits", "dhash"]
SIZE_BINS = [0, 256, 512, 1024, 2048, 4096, np.inf]  # longest side, pixels
DUPLICATE_POLICIES = ("warn", "error", "off")


def difference_hash(image: np.ndarray, side: int = HASH_SIDE) -> str:
    """Hex dHash: is each pixel of a (side+1) x side grey thumbnail brighter than its right neighbour."""
    thumbnail = cv2.resize(image, (side + 1, side), interpolation=cv2.INTER_AREA).astype(np.int16)
    return np.packbits(thumbnail[:, 1:] > thumbnail[:, :-1]).tobytes().hex()


def image_facts(path: str, read: Callable[[str], np.ndarray]) -> dict:
    """Decode one image: its problem (None when it reads), size, stored bit depth and dHash."""
    facts = {"path": path, "problem": None, "height": 0, "width": 0, "bits": None, "dhash": ""}
    try:
        image = read(path)
    except ImageReadError as error:
        return {**facts, "problem": error.reason}
    except Exception as error:  # any decoder failure is this file's problem, reported by name
        return {**facts, "problem": f"{type(error).__name__}: {error}"}
    return {
        **facts,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "bits": _stored_bits(path),
        "dhash": difference_hash(image),
    }


def _stored_bits(path: str) -> int | None:
    """Bits per sample the file stores (PNG/JPEG header, DICOM BitsStored); None for other inputs."""
    file = Path(path)
    if not file.is_file():
        return None
    try:
        return read_header(file.read_bytes(), path).bits
    except ImageReadError:
        return None


def scan_images(
    paths: Sequence[str], read: Callable[[str], np.ndarray], cache_file: Path | None = None, threads: int = 2
) -> pd.DataFrame:
    """`image_facts` of every path (threads: decoding releases the GIL), reusing a cache entry when the
    file's size and mtime are unchanged; the cache is rewritten with what was computed."""
    cached = _load_cache(cache_file)
    stamps = {path: _stamp(path) for path in paths}
    todo = [
        path for path in paths if stamps[path] is None or cached.get(path, {}).get("stamp") != stamps[path]
    ]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        fresh = dict(zip(todo, pool.map(lambda path: image_facts(path, read), todo), strict=True))
    if cache_file is not None and fresh:
        entries = {
            **cached,
            **{p: {**f, "stamp": stamps[p]} for p, f in fresh.items() if stamps[p] is not None},
        }
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(entries))
        partial.replace(cache_file)
    rows = [fresh[path] if path in fresh else {k: cached[path][k] for k in FACT_COLUMNS} for path in paths]
    return pd.DataFrame(rows, columns=FACT_COLUMNS)


def scan_cache_file(folder: str | os.PathLike, *key_parts: object) -> Path:
    """The cache file of one reader configuration (source, DICOM policy, hash version)."""
    digest = hashlib.sha256(repr((HASH_SIDE, *key_parts)).encode()).hexdigest()[:16]
    return Path(folder) / f"scan-{digest}.json"


def _stamp(path: str) -> list[int] | None:
    """(size, mtime in ns) of a file; None for paths that are not files (e.g. array-backed sources)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _load_cache(cache_file: Path | None) -> dict:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        return json.loads(cache_file.read_text())
    except (json.JSONDecodeError, OSError):
        return {}  # a damaged cache is rebuilt, never trusted


def cross_split_duplicates(records: pd.DataFrame, facts: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Pairs of images in different splits whose dHashes differ in at most `max_distance` of 256 bits."""
    table = records[["path", "split", "patient_id"]].merge(facts[["path", "dhash"]], on="path")
    table = table[table["dhash"] != ""]
    bits = {
        split: (
            group,
            np.frombuffer(bytes.fromhex("".join(group["dhash"])), np.uint8).reshape(len(group), -1),
        )
        for split, group in table.groupby("split", sort=True)
    }
    pairs = []
    names = list(bits)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            (rows_a, a), (rows_b, b) = bits[first], bits[second]
            for start in range(0, len(a), 256):
                distance = np.bitwise_count(a[start : start + 256, None, :] ^ b[None, :, :]).sum(axis=2)
                for row, column in zip(*np.nonzero(distance <= max_distance), strict=True):
                    left, right = rows_a.iloc[start + row], rows_b.iloc[column]
                    pairs.append((left["path"], first, right["path"], second, int(distance[row, column])))
    return pd.DataFrame(pairs, columns=["path_a", "split_a", "path_b", "split_b", "distance"])


def data_report(
    records: pd.DataFrame, facts: pd.DataFrame, duplicates: pd.DataFrame, class_names: Sequence[str]
):
    """Counts per split (images, classes, patients), size and bit-depth histograms, unreadable files, and
    cross-split near-duplicates, as one JSON-ready dict."""
    table = records.merge(facts, on="path", how="left")
    readable = table[table["problem"].isna()]
    splits = {}
    for split, group in readable.groupby("split", sort=False):
        counts = group["label"].value_counts()
        splits[split or "(none)"] = {
            "images": len(group),
            "patients": int(group["patient_id"].nunique()),
            "classes": {name: int(counts.get(index, 0)) for index, name in enumerate(class_names)},
        }
    longest = readable[["height", "width"]].max(axis=1)
    sizes = pd.cut(longest, SIZE_BINS, right=False).value_counts(sort=False)
    return {
        "images": len(table),
        "splits": splits,
        "longest_side": {
            f"{int(b.left)}-{b.right if np.isinf(b.right) else int(b.right) - 1}": int(n)
            for b, n in sizes.items()
        },
        "bits_stored": {
            str(k): int(v) for k, v in readable["bits"].fillna("unknown").value_counts().sort_index().items()
        },
        "unreadable": [
            {"path": p, "problem": r}
            for p, r in table.loc[table["problem"].notna(), ["path", "problem"]].values
        ],
        "cross_split_duplicates": duplicates.to_dict("records"),
    }


def write_report(report: dict, folder: str | os.PathLike) -> tuple[Path, Path]:
    """`data_report.json` and a readable `data_report.md` in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "data_report.json", folder / "data_report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    classes = next(iter(report["splits"].values()), {}).get("classes", {})
    lines = [
        "# Data report",
        "",
        f"{report['images']} images listed.",
        "",
        "| split | images | patients | " + " | ".join(classes) + " |",
        "|---|---|---|" + "---|" * len(classes),
        *(
            f"| {split} | {row['images']} | {row['patients']} | "
            + " | ".join(str(n) for n in row["classes"].values())
            + " |"
            for split, row in report["splits"].items()
        ),
        "",
        "Longest side (px): " + ", ".join(f"{k}: {v}" for k, v in report["longest_side"].items()),
        "",
        "Bits stored: " + ", ".join(f"{k}: {v}" for k, v in report["bits_stored"].items()),
        "",
        f"## Unreadable files ({len(report['unreadable'])})",
        "",
        *(f"- {row['path']}: {row['problem']}" for row in report["unreadable"]),
        "",
        f"## Near-duplicates across splits ({len(report['cross_split_duplicates'])})",
        "",
        *(
            f"- {row['path_a']} ({row['split_a']}) ~ {row['path_b']} ({row['split_b']}), "
            f"{row['distance']} of {HASH_SIDE * HASH_SIDE} bits differ"
            for row in report["cross_split_duplicates"]
        ),
    ]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path

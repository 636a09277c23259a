"""Where images come from (folders, manifest CSV, MedMNIST npz, generated data), as one records table."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pneumonia_cam.data.dicom import DEFAULT_POLICY, DicomPolicy, header_fields
from pneumonia_cam.data.image_io import DICOM_SUFFIXES, ImageReadError, read_grayscale, to_gray_uint8
from pneumonia_cam.data.splits import SPLITS, patient_id_from_filename

RECORD_COLUMNS = ("path", "label", "patient_id", "split")
# kept when a source gives them: the view position (a data config can filter on it) and radiologists' boxes
# as JSON [[x, y, width, height], ...] in the original image's pixels (CAM localisation in eval.py)
OPTIONAL_COLUMNS = ("view", "boxes")
DEFAULT_CLASS_NAMES = ("NORMAL", "PNEUMONIA")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
MEDMNIST_SIZES = (28, 64, 128, 224)
Record = tuple[str, int, str, str]


class ImageSource(ABC):
    """A data set as a records table plus a reader, so the data module never cares about storage."""

    dicom: DicomPolicy = DEFAULT_POLICY  # how DICOM values become grey levels; the data module sets it

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        # rows of the source's own listing that records() left out, by reason; the data module logs them
        self.excluded: Counter[str] = Counter()

    def prepare(self) -> None:  # noqa: B027 (optional hook: most sources have nothing to fetch)
        """Download or generate the data; called once, on rank 0, from `prepare_data`."""

    @abstractmethod
    def records(self) -> pd.DataFrame:
        """One row per image: path, label (int), patient_id, split ('train'/'val'/'test' or '')."""

    def read(self, path: str) -> np.ndarray:
        """Decode one record's image as HxW uint8."""
        return read_grayscale(path, self.dicom)


def with_dicom_header(records: pd.DataFrame, patient_given: pd.Series | None = None) -> pd.DataFrame:
    """DICOM rows take PatientID (unless `patient_given` marks an id the listing gave) and ViewPosition from
    their header; nothing else is read. A header that does not read leaves the row to the image scan."""
    is_dicom = records["path"].str.lower().str.endswith(DICOM_SUFFIXES)
    if not is_dicom.any():
        return records
    records = records.assign(view="")
    for index in records.index[is_dicom]:
        try:
            fields = header_fields(records.at[index, "path"])
        except ImageReadError:
            continue
        records.at[index, "view"] = fields["view"]
        if fields["patient_id"] and (patient_given is None or not patient_given.iloc[index]):
            records.at[index, "patient_id"] = fields["patient_id"]
    return records


def filter_views(records: pd.DataFrame, views: Sequence[str], source: ImageSource) -> pd.DataFrame:
    """Keep the rows whose view position is one of `views` (data.views); count the rest by view."""
    if "view" not in records:
        raise ValueError(
            f"data.views={list(views)} needs view positions, which {type(source).__name__} does not give "
            "(DICOM sources read ViewPosition; other files have none)"
        )
    wanted = {str(view).upper() for view in views}
    keep = records["view"].str.upper().isin(wanted)
    for view, count in records.loc[~keep, "view"].value_counts().items():
        source.excluded[f"view {view or 'unknown'} (data.views={sorted(wanted)})"] += int(count)
    return records[keep].reset_index(drop=True)


def validate_records(records: pd.DataFrame, class_names: Sequence[str], source: ImageSource) -> pd.DataFrame:
    """Fail early on a source that breaks the records contract (columns, labels, splits, duplicates);
    return the contract's columns (and the optional ones it gave), renumbered 0..n-1."""
    name = type(source).__name__
    missing = [column for column in RECORD_COLUMNS if column not in records]
    if missing:
        raise ValueError(f"{name}.records() lacks column(s) {missing}")
    if records.empty:
        raise ValueError(f"{name} found no images in {source.data_dir}")
    bad_labels = sorted(set(records["label"].astype(int)) - set(range(len(class_names))))
    if bad_labels:
        raise ValueError(
            f"labels {bad_labels} are outside 0..{len(class_names) - 1} for classes {tuple(class_names)}"
        )
    bad_splits = sorted(set(records["split"]) - {"", *SPLITS})
    if bad_splits:
        raise ValueError(f"unknown split names {bad_splits}; expected {list(SPLITS)} or ''")
    duplicated = records["path"][records["path"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{len(duplicated)} image path(s) listed twice, e.g. {duplicated[:3]}")
    columns = [*RECORD_COLUMNS, *(column for column in OPTIONAL_COLUMNS if column in records)]
    return records.loc[:, columns].reset_index(drop=True)


def make_records(rows: Iterable[Record]) -> pd.DataFrame:
    """Build the records table with stable column order and dtypes."""
    frame = pd.DataFrame(list(rows), columns=list(RECORD_COLUMNS))
    return frame.astype({"path": str, "label": "int64", "patient_id": str, "split": str})


class FolderSource(ImageSource):
    """Class sub-folders (`NORMAL/`, `PNEUMONIA/`), optionally under `train/`, `val/`, `test/` (Kaggle)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__(data_dir)
        self.class_names = tuple(class_names)
        self.extensions = tuple(ext.lower() for ext in extensions)

    def records(self) -> pd.DataFrame:
        """Scan the class folders of every split folder present (or of data_dir itself), sorted by path."""
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"data folder {self.data_dir} does not exist")
        splits = [split for split in SPLITS if (self.data_dir / split).is_dir()]
        roots = [(self.data_dir / split, split) for split in splits] or [(self.data_dir, "")]
        return with_dicom_header(
            make_records(row for root, split in roots for row in self._scan(root, split))
        )

    def _scan(self, root: Path, split: str) -> Iterator[Record]:
        """Yield the image files of each class folder under root; an empty or missing class is an error."""
        for label, name in enumerate(self.class_names):
            files = self._image_files(root / name)
            if not files:
                raise ValueError(
                    f"class {name!r} has no images in folder {root / name} "
                    f"(looked for {', '.join(self.extensions)})"
                )
            yield from ((str(path), label, patient_id_from_filename(path.name), split) for path in files)

    def _image_files(self, folder: Path) -> list[Path]:
        """Visible files with an accepted extension, sorted so records are deterministic."""
        if not folder.is_dir():
            return []
        return sorted(
            path
            for path in folder.iterdir()
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in self.extensions
        )


class ManifestSource(ImageSource):
    """A CSV with columns path,label[,patient_id][,split]; relative image paths are relative to the CSV."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        csv: str | os.PathLike = "manifest.csv",
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    ) -> None:
        super().__init__(data_dir)
        self.csv = self.data_dir / Path(csv).expanduser()  # an absolute csv replaces data_dir
        self.class_names = tuple(class_names)

    def records(self) -> pd.DataFrame:
        """Parse and validate every manifest row, naming the CSV line of the first bad value."""
        if not self.csv.is_file():
            raise FileNotFoundError(f"manifest {self.csv} does not exist")
        table = pd.read_csv(self.csv, dtype=str, keep_default_na=False).rename(columns=str.strip)
        missing = [column for column in ("path", "label") if column not in table]
        if missing:
            raise ValueError(
                f"manifest {self.csv} lacks column(s) {missing}: it has {list(table.columns)}, "
                "expected path,label and optionally patient_id,split"
            )
        for column in ("patient_id", "split"):
            if column not in table:
                table[column] = ""
        records = make_records(self._parse(i, row) for i, row in enumerate(table.itertuples(index=False)))
        return with_dicom_header(records, patient_given=table["patient_id"].str.strip() != "")

    def _parse(self, index: int, row: tuple) -> Record:
        """Turn one CSV row into a record (label name or integer; patient from the file name when blank)."""
        where = f"manifest {self.csv}, row {index + 1} (line {index + 2})"
        relative = row.path.strip()
        if not relative:
            raise ValueError(f"{where}: empty path")
        path = self.csv.parent / Path(relative).expanduser()
        split = row.split.strip().lower()
        if split not in ("", *SPLITS):
            raise ValueError(f"{where}: unknown split {row.split!r}; expected one of {list(SPLITS)} or blank")
        patient_id = row.patient_id.strip() or patient_id_from_filename(path.name)
        return str(path), self._label(row.label, where), patient_id, split

    def _label(self, value: str, where: str) -> int:
        """Accept a class name or an integer index into class_names."""
        value = value.strip()
        if value in self.class_names:
            return self.class_names.index(value)
        if value.lstrip("-").isdigit() and 0 <= int(value) < len(self.class_names):
            return int(value)
        raise ValueError(
            f"{where}: unknown label {value!r}; expected one of {list(self.class_names)} "
            f"or an integer 0..{len(self.class_names) - 1}"
        )


def medmnist_filename(size: int) -> str:
    """The file name the medmnist package downloads for PneumoniaMNIST at this size (28 px has no suffix)."""
    return "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"


class MedMNISTSource(ImageSource):
    """PneumoniaMNIST npz (train/val/test images and (N,1) labels); images are served from memory."""

    download_timeout_s = 15.0

    def __init__(
        self, data_dir: str | os.PathLike, size: int = 224, npz: str | os.PathLike | None = None
    ) -> None:
        super().__init__(data_dir)
        if size not in MEDMNIST_SIZES:
            raise ValueError(f"PneumoniaMNIST size must be one of {MEDMNIST_SIZES}, got {size}")
        self.size = size
        self.download = npz is None
        self.npz = self.data_dir / Path(npz or medmnist_filename(size)).expanduser()
        self._images: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Download the npz through the medmnist package when it is missing (only for the default file)."""
        if self.npz.is_file():
            return
        if not self.download:
            raise FileNotFoundError(f"PneumoniaMNIST file {self.npz} does not exist")
        self._download()

    def _download(self) -> None:
        """Fetch with a capped socket timeout; a failure becomes a message that says what to pass instead."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.download_timeout_s)
        try:
            import medmnist  # deferred: imports torchvision and is only needed to download

            # the constructor downloads (with a progress bar); "val" keeps the array it then loads small
            medmnist.PneumoniaMNIST(split="val", download=True, root=str(self.data_dir), size=self.size)
        except Exception as error:
            self.npz.unlink(missing_ok=True)  # never leave a partial download that looks complete
            raise RuntimeError(
                f"Could not download PneumoniaMNIST to {self.npz} ({type(error).__name__}). "
                "Without internet, use local data instead: "
                "`data=chest_xray data.data_dir=<folder>` (class folders), "
                "`data=manifest data.data_dir=<folder> data.source.csv=<file>`, "
                "`data.source.npz=<file>` (an already downloaded PneumoniaMNIST npz), "
                "or `experiment=smoke` (generated synthetic images)."
            ) from error
        finally:
            socket.setdefaulttimeout(previous)

    def records(self) -> pd.DataFrame:
        """One pseudo path `<npz>#<split>/<index>` per image; each image is its own (unknown) patient."""
        if not self.npz.is_file():
            raise FileNotFoundError(f"PneumoniaMNIST file {self.npz} does not exist (run prepare_data first)")
        with np.load(self.npz) as archive:
            missing = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
            missing = [key for key in missing if key not in archive.files]
            if missing:
                raise ValueError(f"{self.npz} is not a PneumoniaMNIST npz: missing keys {missing}")
            labels = {split: archive[f"{split}_labels"].reshape(-1).astype(int) for split in SPLITS}
        rows = (
            (path, int(label), path, split)
            for split in SPLITS
            for index, label in enumerate(labels[split])
            for path in [f"{self.npz}#{split}/{index:05d}"]
        )
        return make_records(rows)

    def read(self, path: str) -> np.ndarray:
        """Serve the image array behind a pseudo path, converting RGB variants to gray."""
        split, _, index = str(path).rpartition("#")[2].partition("/")
        if split not in SPLITS or not index.isdigit():
            raise ImageReadError(path, "is not a PneumoniaMNIST record path (<npz>#<split>/<index>)")
        images = self._split_images(split)
        if int(index) >= len(images):
            raise ImageReadError(path, f"index out of range ({len(images)} {split} images)")
        return to_gray_uint8(images[int(index)], path, rgb=True)

    def _split_images(self, split: str) -> np.ndarray:
        """Decompress one split's image array on first use, once per process."""
        with self._lock:
            if split not in self._images:
                with np.load(self.npz) as archive:
                    self._images[split] = archive[f"{split}_images"]
            return self._images[split]

    def __getstate__(self) -> dict:
        """Ship no arrays and no lock to worker processes; they load lazily on their side."""
        return {**self.__dict__, "_images": {}, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


class SyntheticSource(FolderSource):
    """A small learnable two-class set generated on disk: PNEUMONIA images carry a bright Gaussian blob."""

    def __init__(
        self, data_dir: str | os.PathLike, num_images: int = 160, image_size: int = 64, seed: int = 0
    ) -> None:
        if num_images < 2 or image_size < 8:
            raise ValueError(f"need num_images >= 2 and image_size >= 8, got {num_images} and {image_size}")
        folder = Path(data_dir).expanduser() / f"synthetic_{image_size}px_{num_images}_seed{seed}"
        super().__init__(folder, class_names=DEFAULT_CLASS_NAMES, extensions=(".png",))
        self.num_images, self.image_size, self.seed = num_images, image_size, seed

    @property
    def blobs_csv(self) -> Path:
        """Blob centres and radii of the PNEUMONIA images, written last so its presence marks completion."""
        return self.data_dir / "blobs.csv"

    def prepare(self) -> None:
        """Generate once into a staging folder, then rename it into place, so readers never see half a set."""
        if self.blobs_csv.is_file():
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=self.data_dir.parent))
        try:
            self._write(staging)
            os.rename(staging, self.data_dir)
        except OSError:
            if not self.blobs_csv.is_file():  # losing a race to another process is fine
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def records(self) -> pd.DataFrame:
        """Generate if needed (cheap and deterministic), then scan like a class-folder set; each blob's
        bounding square is the image's box (what eval's CAM localisation scores against)."""
        self.prepare()
        records = super().records()
        blobs = self.blobs().set_index("path")
        boxes = {
            path: json.dumps([[row.cx - row.radius, row.cy - row.radius, 2 * row.radius, 2 * row.radius]])
            for path, row in blobs.iterrows()
        }
        return records.assign(boxes=records["path"].map(boxes).fillna("[]"))

    def blobs(self) -> pd.DataFrame:
        """Absolute image path, blob centre (cx, cy) and radius in pixels for every PNEUMONIA image."""
        self.prepare()
        table = pd.read_csv(self.blobs_csv)
        table["path"] = [str(self.data_dir / path) for path in table["path"]]
        return table

    def _write(self, folder: Path) -> None:
        """Write alternating NORMAL/PNEUMONIA PNGs from one seeded generator, then blobs.csv."""
        rng = np.random.default_rng(self.seed)
        blobs = []
        for index in range(self.num_images):
            label = index % len(self.class_names)
            name = self.class_names[label]
            relative = f"{name}/{name.lower()}_{index:04d}.png"
            image, blob = synthetic_image(rng, self.image_size, with_blob=label == 1)
            (folder / name).mkdir(exist_ok=True)
            if not cv2.imwrite(str(folder / relative), image):
                raise OSError(f"could not write {folder / relative}")
            if blob is not None:
                blobs.append((relative, *blob))
        frame = pd.DataFrame(blobs, columns=["path", "cx", "cy", "radius"])
        frame.to_csv(folder / "blobs.csv", index=False, float_format="%.3f", lineterminator="\n")


def synthetic_image(
    rng: np.random.Generator, size: int, with_blob: bool
) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Smooth random background plus noise, and optionally a bright Gaussian blob; returns (image, blob)."""
    coarse = rng.uniform(80.0, 130.0, size=(4, 4))
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(
        0.0, 8.0, (size, size)
    )
    blob = None
    if with_blob:
        # radius: where the blob has fallen to 10% of its peak, i.e. its visible edge (sigma = radius / 2.15)
        radius = float(rng.uniform(0.14, 0.22) * size)
        cx, cy = (float(v) for v in rng.uniform(radius, size - 1 - radius, size=2))
        yy, xx = np.mgrid[0:size, 0:size]
        image += 110.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * (radius / 2.15) ** 2))
        blob = (cx, cy, radius)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), blob


class MixedSource(ImageSource):
    """Several sources as one data set (the reference study: RSNA + the COVID-19 collection).

    `sources` maps a name to a partial source (called with its folder and `class_names`) and `data_dirs` the
    name to its folder (relative to data_dir, or absolute). Patient ids are prefixed with the name, so two
    sources' ids never merge into one patient. `label_by="source"` labels every image by the source it came
    from instead (class_names = the source names, in order; predefined splits are dropped): the first half of
    the shortcut check, a model that can only learn where an image was taken.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        sources: Mapping[str, Callable[..., ImageSource]],
        data_dirs: Mapping[str, str],
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        label_by: str = "class",
    ) -> None:
        super().__init__(data_dir)
        missing = sorted(set(sources) - set(data_dirs))
        if missing:
            raise ValueError(f"MixedSource: no data_dirs entry for source(s) {missing}")
        if label_by not in ("class", "source"):
            raise ValueError(f"MixedSource: label_by={label_by!r}; choose 'class' or 'source'")
        if label_by == "source" and list(class_names) != list(sources):
            raise ValueError(
                f"MixedSource label_by=source: class_names must be the source names in order, "
                f"{list(sources)}, got {list(class_names)}"
            )
        self.label_by = label_by
        member_classes = DEFAULT_CLASS_NAMES if label_by == "source" else class_names
        self.sources = {
            name: make(str(self.data_dir / data_dirs[name]), class_names=member_classes)
            for name, make in sources.items()
        }

    def prepare(self) -> None:
        for source in self.sources.values():
            source.prepare()

    def records(self) -> pd.DataFrame:
        """Every source's records, in the order given, with a `source` prefix on patient ids."""
        tables = []
        for index, (name, source) in enumerate(self.sources.items()):
            table = source.records()
            table = table.assign(patient_id=name + ":" + table["patient_id"].astype(str))
            tables.append(table.assign(label=index, split="") if self.label_by == "source" else table)
            self.excluded.update({f"{name}: {reason}": count for reason, count in source.excluded.items()})
        return pd.concat(tables, ignore_index=True)

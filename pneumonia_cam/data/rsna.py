"""The RSNA Pneumonia Detection Challenge in its Kaggle layout, as records with boxes and view positions.

<data_dir>/stage_2_train_images/<patientId>.dcm
<data_dir>/stage_2_train_labels.csv          patientId,x,y,width,height,Target (one row per box)
<data_dir>/stage_2_detailed_class_info.csv   patientId,class (Lung Opacity | No Lung Opacity / Not Normal |
                                             Normal; repeated per box)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pneumonia_cam.data.dicom import header_fields
from pneumonia_cam.data.sources import DEFAULT_CLASS_NAMES, ImageSource

NOT_NORMAL = "No Lung Opacity / Not Normal"
NOT_NORMAL_POLICIES = ("exclude", "negative")
UNKNOWN = "(not in the class file)"
BOX_COLUMNS = ["x", "y", "width", "height"]


class RSNASource(ImageSource):
    """One record per patientId: label from Target (1: PNEUMONIA), boxes kept, view from the DICOM header.

    `not_normal`: "exclude" leaves out "No Lung Opacity / Not Normal" patients (counted), and Target 0
    patients the class file lacks (they may be either; counted apart); "negative" keeps both as NORMAL.
    Labelled patients without an image file are left out and counted (the label CSVs cover all 26,684; a
    download may hold fewer). `data.views` filters on the view.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        images: str = "stage_2_train_images",
        labels: str = "stage_2_train_labels.csv",
        class_info: str = "stage_2_detailed_class_info.csv",
        not_normal: str = "exclude",
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    ) -> None:
        super().__init__(data_dir)
        if not_normal not in NOT_NORMAL_POLICIES:
            raise ValueError(f"not_normal must be one of {list(NOT_NORMAL_POLICIES)}, got {not_normal!r}")
        missing = {"NORMAL", "PNEUMONIA"} - set(class_names)
        if missing:
            raise ValueError(
                f"RSNASource labels NORMAL and PNEUMONIA; class_names {list(class_names)} lacks {missing}"
            )
        self.images = self.data_dir / images
        self.labels_csv = self.data_dir / labels  # an absolute path replaces data_dir
        self.class_info_csv = self.data_dir / class_info
        self.not_normal = not_normal
        self.label_of = {
            "NORMAL": list(class_names).index("NORMAL"),
            "PNEUMONIA": list(class_names).index("PNEUMONIA"),
        }

    def records(self) -> pd.DataFrame:
        """Patients in label-file order with their class, boxes, image path and view."""
        patients = self._patients()
        if self.not_normal == "exclude":
            for name, reason in (
                (NOT_NORMAL, f"class {NOT_NORMAL!r}"),
                (UNKNOWN, "Target 0 without a class"),
            ):
                dropped = patients["class"] == name
                self.excluded[f"{reason} (data.source.not_normal=exclude)"] += int(dropped.sum())
                patients = patients[~dropped]
        paths = patients["patientId"].map(lambda pid: self.images / f"{pid}.dcm")
        present = paths.map(Path.is_file)
        self.excluded[f"no image file in {self.images}"] += int((~present).sum())
        patients, paths = patients[present], paths[present]
        views = [header_fields(path)["view"] for path in paths]
        table = pd.DataFrame(
            {
                "path": paths.map(str).to_numpy(),
                "label": patients["Target"].map({0: self.label_of["NORMAL"], 1: self.label_of["PNEUMONIA"]}),
                "patient_id": patients["patientId"].to_numpy(),
                "split": "",
                "view": views,
                "boxes": patients["boxes"].to_numpy(),
            }
        ).astype({"label": "int64"})
        return table.reset_index(drop=True)

    def _patients(self) -> pd.DataFrame:
        """One row per patientId: Target, class and the JSON list of its boxes; inconsistent files fail."""
        labels = _read_csv(self.labels_csv, ["patientId", *BOX_COLUMNS, "Target"]).drop_duplicates()
        info = _read_csv(self.class_info_csv, ["patientId", "class"]).drop_duplicates()
        for table, column, csv in ((labels, "Target", self.labels_csv), (info, "class", self.class_info_csv)):
            conflicting = table.groupby("patientId", sort=False)[column].nunique()
            if (conflicting > 1).any():
                raise ValueError(
                    f"{csv}: patient {conflicting[conflicting > 1].index[0]} has several {column} values"
                )
        boxes = (
            labels[labels["Target"] == 1]
            .groupby("patientId", sort=False)[BOX_COLUMNS]
            .apply(lambda rows: json.dumps(rows.astype(float).to_numpy().tolist()))
        )
        patients = labels.drop_duplicates("patientId")[["patientId", "Target"]].merge(
            info, on="patientId", how="left"
        )
        # a patient missing from the class file: Target 1 is an opacity; Target 0 is Normal or Not Normal,
        # which only matters (and is then left out, counted) when not_normal=exclude
        unclassified = patients["class"].isna()
        patients.loc[unclassified & (patients["Target"] == 1), "class"] = "Lung Opacity"
        patients.loc[unclassified & (patients["Target"] == 0), "class"] = UNKNOWN
        inconsistent = (patients["Target"] == 1) != (patients["class"] == "Lung Opacity")
        if inconsistent.any():
            raise ValueError(
                f"patient {patients.loc[inconsistent, 'patientId'].iloc[0]}: Target and class disagree "
                f"between {self.labels_csv.name} and {self.class_info_csv.name}"
            )
        return patients.assign(boxes=patients["patientId"].map(boxes).fillna("[]"))


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """A label CSV with the columns it must have, named in the error when it lacks them."""
    if not path.is_file():
        raise FileNotFoundError(f"RSNA label file {path} does not exist")
    table = pd.read_csv(path)
    missing = [column for column in columns if column not in table]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it has {list(table.columns)}")
    return table[columns]

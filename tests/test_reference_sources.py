"""The reference study's sources: RSNA (DICOM + label CSVs) and the COVID-19 collection, alone and mixed."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_helpers import make_class_folders, make_dicom, small_transforms
from helpers import SHARED_DATA

from pneumonia_cam.data.covid_collection import CovidCollectionSource
from pneumonia_cam.data.datamodule import ChestXrayDataModule
from pneumonia_cam.data.rsna import NOT_NORMAL, RSNASource
from pneumonia_cam.data.sources import FolderSource, ManifestSource, MixedSource, filter_views

RSNA_LABELS = SHARED_DATA / "rsna_labels"
COVID = SHARED_DATA / "covid_collection_subset"
needs_rsna = pytest.mark.skipif(not RSNA_LABELS.is_dir(), reason="../shared/data/rsna_labels is absent")
needs_covid = pytest.mark.skipif(
    not COVID.is_dir(), reason="../shared/data/covid_collection_subset is absent"
)


def rsna_csvs() -> tuple[dict[str, str], dict[str, list[list[float]]]]:
    """By hand, with the csv module: each labelled patient's class (None: not in the class file; 79 of the
    real file's patients are not), and the boxes of each Target=1 patient."""
    with (RSNA_LABELS / "stage_2_detailed_class_info.csv").open() as f:
        known = {row["patientId"]: row["class"] for row in csv.DictReader(f)}
    classes: dict[str, str | None] = {}
    boxes: dict[str, list[list[float]]] = {}
    with (RSNA_LABELS / "stage_2_train_labels.csv").open() as f:
        for row in csv.DictReader(f):
            classes[row["patientId"]] = known.get(row["patientId"])
            if row["Target"] == "1":
                box = [float(row[key]) for key in ("x", "y", "width", "height")]
                if box not in boxes.setdefault(row["patientId"], []):
                    boxes[row["patientId"]].append(box)
    return classes, boxes


def rsna_folder(root: Path, classes: dict[str, str], boxes: dict[str, list]) -> dict[str, str]:
    """Small DICOMs named by real patientIds: 3 with opacity (one with 2+ boxes), 3 normal, 2 not normal.

    Returns {patientId: view} of the files written (views alternate PA / AP).
    """
    opacity = [pid for pid in boxes if len(boxes[pid]) >= 2][:1] + [
        pid for pid in boxes if len(boxes[pid]) == 1
    ][:2]
    normal = [pid for pid, name in classes.items() if name == "Normal"][:3]
    not_normal = [pid for pid, name in classes.items() if name == NOT_NORMAL][:2]
    views = {}
    for i, pid in enumerate(opacity + normal + not_normal):
        views[pid] = "PA" if i % 2 == 0 else "AP"
        pixels = np.full((16, 16), 100 * (i + 1))
        make_dicom(
            root / "stage_2_train_images" / f"{pid}.dcm", pixels, PatientID=pid, ViewPosition=views[pid]
        )
    return views


def rsna_source(root: Path, **options) -> RSNASource:
    return RSNASource(
        root,
        labels=str(RSNA_LABELS / "stage_2_train_labels.csv"),
        class_info=str(RSNA_LABELS / "stage_2_detailed_class_info.csv"),
        **options,
    )


@needs_rsna
def test_rsna_records_labels_boxes_views_and_counted_exclusions(tmp_path):
    classes, boxes = rsna_csvs()
    (tmp_path / "stage_2_train_images").mkdir()
    views = rsna_folder(tmp_path, classes, boxes)
    source = rsna_source(tmp_path)
    records = source.records()
    kept = [pid for pid in views if classes[pid] != NOT_NORMAL]
    assert sorted(records["patient_id"]) == sorted(kept)
    for row in records.itertuples():
        assert row.label == (1 if classes[row.patient_id] == "Lung Opacity" else 0)
        assert json.loads(row.boxes) == boxes.get(row.patient_id, [])
        assert row.view == views[row.patient_id]
        assert row.path == str(tmp_path / "stage_2_train_images" / f"{row.patient_id}.dcm")
    assert max(len(json.loads(b)) for b in records["boxes"]) >= 2  # several box rows collapse into one record
    not_normal_total = sum(name == NOT_NORMAL for name in classes.values())
    unknown_negative = sum(name is None and pid not in boxes for pid, name in classes.items())
    assert len(classes) == 26684 and unknown_negative == 67
    assert source.excluded == {
        f"class {NOT_NORMAL!r} (data.source.not_normal=exclude)": not_normal_total,
        "Target 0 without a class (data.source.not_normal=exclude)": unknown_negative,
        f"no image file in {tmp_path / 'stage_2_train_images'}": 26684
        - not_normal_total
        - unknown_negative
        - len(kept),
    }

    negative = rsna_source(tmp_path, not_normal="negative").records()
    assert len(negative) == len(views)
    assert (
        negative.set_index("patient_id").loc[[p for p in views if classes[p] == NOT_NORMAL], "label"] == 0
    ).all()

    pa_source = rsna_source(tmp_path)
    pa_only = filter_views(pa_source.records(), ["pa"], pa_source)
    assert set(pa_only["view"]) == {"PA"}
    assert pa_source.excluded["view AP (data.views=['PA'])"] == sum(views[p] == "AP" for p in kept)


def test_rsna_contradictions_fail_and_unclassified_patients_follow_the_policy(tmp_path):
    (tmp_path / "labels.csv").write_text("patientId,x,y,width,height,Target\np1,1,2,3,4,1\np2,,,,,0\n")
    (tmp_path / "info.csv").write_text("patientId,class\np1,Normal\np2,Normal\n")
    with pytest.raises(ValueError, match="patient p1: Target and class disagree"):
        RSNASource(tmp_path, labels="labels.csv", class_info="info.csv").records()
    # p2 (Target 0) is missing from the class file: Normal or Not Normal is unknown
    (tmp_path / "info.csv").write_text("patientId,class\np1,Lung Opacity\n")
    for pid in ("p1", "p2"):
        make_dicom(tmp_path / "stage_2_train_images" / f"{pid}.dcm", np.zeros((4, 4)), PatientID=pid)
    excluding = RSNASource(tmp_path, labels="labels.csv", class_info="info.csv")
    assert excluding.records()["patient_id"].tolist() == ["p1"]
    assert excluding.excluded["Target 0 without a class (data.source.not_normal=exclude)"] == 1
    keeping = RSNASource(tmp_path, labels="labels.csv", class_info="info.csv", not_normal="negative")
    assert keeping.records()[["patient_id", "label"]].values.tolist() == [["p1", 1], ["p2", 0]]
    with pytest.raises(ValueError, match="not_normal must be one of"):
        RSNASource(tmp_path, not_normal="drop")


@needs_covid
def test_covid_collection_subset_has_exactly_its_60_frontal_xrays():
    source = CovidCollectionSource(COVID)
    records = source.records()
    metadata = pd.read_csv(COVID / "metadata.csv", dtype=str, keep_default_na=False)
    frontal = metadata[metadata["view"].isin(["PA", "AP", "AP Supine"]) & (metadata["modality"] == "X-ray")]
    assert len(records) == len(frontal) == 60
    assert records["label"].value_counts().to_dict() == {1: 51, 0: 9}
    assert dict(source.excluded) == {"modality CT": 12, "view L": 2}
    assert sorted(records["patient_id"].unique()) == sorted(frontal["patientid"].unique())
    assert all(Path(path).is_file() for path in records["path"])


def test_covid_findings_map_by_full_last_then_first_part(tmp_path):
    (tmp_path / "images").mkdir()
    rows = [
        ("1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "a.png"),
        ("2", "No Finding", "AP", "X-ray", "b.png"),
        ("3", "Tuberculosis", "PA", "X-ray", "c.png"),
        ("4", "COVID-19", "PA", "X-ray", "gone.png"),
        ("5", "Pneumonia/Fungal/Unheard", "PA", "X-ray", "d.png"),
    ]
    for *_, name in rows:
        if name != "gone.png":
            (tmp_path / "images" / name).write_bytes(b"x")
    table = pd.DataFrame(rows, columns=["patientid", "finding", "view", "modality", "filename"])
    table.assign(folder="images").to_csv(tmp_path / "metadata.csv", index=False)
    source = CovidCollectionSource(
        tmp_path, findings={"Pneumonia": "PNEUMONIA", "COVID-19": "PNEUMONIA", "No Finding": "NORMAL"}
    )
    records = source.records()
    assert records[["patient_id", "label"]].values.tolist() == [["1", 1], ["2", 0], ["5", 1]]
    assert dict(source.excluded) == {
        "finding 'Tuberculosis' not in data.source.findings": 1,
        "image file missing": 1,
    }
    with pytest.raises(ValueError, match=r"findings map to \['VIRAL'\]"):
        CovidCollectionSource(tmp_path, findings={"COVID-19": "VIRAL"})


@needs_rsna
@needs_covid
def test_reference_mix_balances_and_splits_by_patient(tmp_path, caplog):
    """RSNA + the collection through the data module: prefixed patients, equal classes, grouped split."""
    classes, boxes = rsna_csvs()
    rsna_dir = tmp_path / "rsna"
    (rsna_dir / "stage_2_train_images").mkdir(parents=True)
    rsna_folder(rsna_dir, classes, boxes)
    rsna = lambda folder, class_names: rsna_source(Path(folder), class_names=class_names)  # noqa: E731
    source = lambda data_dir: MixedSource(  # noqa: E731
        data_dir, {"rsna": rsna, "covid": CovidCollectionSource}, {"rsna": str(rsna_dir), "covid": str(COVID)}
    )
    dm = ChestXrayDataModule(
        str(tmp_path), source, small_transforms(), image_size=16, num_workers=0, balance="undersample", seed=3
    )
    with caplog.at_level(logging.INFO, logger="pneumonia_cam.data.datamodule"):
        dm.setup("fit")
    records = dm.records
    assert len(records) == 6 + 60 and {"view", "boxes"} <= set(records.columns)
    assert records["patient_id"].str.match(r"^(rsna|covid):").all()
    assert (records.groupby("patient_id")["split"].nunique() == 1).all()
    train = dm.data_train.records["label"].value_counts()
    assert train[0] == train[1]
    assert "MixedSource left out" in caplog.text and "covid: view L: 2" in caplog.text


def test_dicom_files_give_patient_and_view_from_their_header_only(tmp_path):
    """Folder DICOMs: PatientID groups, ViewPosition is a column; a manifest's own patient id wins."""
    for name, patient, view in (
        ("NORMAL/a.dcm", "P1", "PA"),
        ("NORMAL/b.dcm", "P1", "AP"),
        ("PNEUMONIA/c.dcm", "P2", "LL"),
    ):
        make_dicom(
            tmp_path / name, np.zeros((4, 4)), PatientID=patient, ViewPosition=view, PatientName="Doe^Jane"
        )
    records = FolderSource(tmp_path).records()
    assert records[["patient_id", "view"]].values.tolist() == [["P1", "PA"], ["P1", "AP"], ["P2", "LL"]]
    assert set(records.columns) == {"path", "label", "patient_id", "split", "view"}  # no name, no date
    (tmp_path / "m.csv").write_text(
        "path,label,patient_id\nNORMAL/a.dcm,NORMAL,given\nNORMAL/b.dcm,NORMAL,\n"
    )
    manifest = ManifestSource(tmp_path, csv="m.csv").records()
    assert manifest["patient_id"].tolist() == ["given", "P1"]
    source = FolderSource(tmp_path)
    assert filter_views(source.records(), ["PA", "AP"], source)["view"].tolist() == ["PA", "AP"]
    assert dict(source.excluded) == {"view LL (data.views=['AP', 'PA'])": 1}
    with pytest.raises(ValueError, match="needs view positions, which FolderSource does not give"):
        filter_views(FolderSource(tmp_path).records().drop(columns="view"), ["PA"], FolderSource(tmp_path))


def test_mixed_source_can_label_by_source(tmp_path):
    """label_by=source: every image's label is its source's index, predefined splits are dropped."""
    make_class_folders(tmp_path / "a", counts=(3, 4), split="train")
    make_class_folders(tmp_path / "b", counts=(2, 2))
    sources = {"a": FolderSource, "b": FolderSource}
    mixed = MixedSource(tmp_path, sources, {"a": "a", "b": "b"}, class_names=["a", "b"], label_by="source")
    records = mixed.records()
    assert (records["label"] == records["patient_id"].str.startswith("b:").astype(int)).all()
    assert records["label"].value_counts().to_dict() == {0: 7, 1: 4}
    assert (records["split"] == "").all()
    with pytest.raises(ValueError, match="source names in order"):
        MixedSource(
            tmp_path, sources, {"a": "a", "b": "b"}, class_names=["NORMAL", "PNEUMONIA"], label_by="source"
        )
    with pytest.raises(ValueError, match="label_by"):
        MixedSource(tmp_path, sources, {"a": "a", "b": "b"}, label_by="hospital")

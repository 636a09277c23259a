"""The COVID-19 image data collection (Cohen et al.) in its own layout: `metadata.csv` + `images/`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd

from pneumonia_cam.data.sources import DEFAULT_CLASS_NAMES, ImageSource

FRONTAL_VIEWS = ("PA", "AP", "AP Supine")
# finding -> class; infectious pneumonias are PNEUMONIA, "No Finding" is NORMAL, anything else is left out
DEFAULT_FINDINGS = {
    "No Finding": "NORMAL",
    **dict.fromkeys(
        [
            "Pneumonia",
            "COVID-19",
            "SARS",
            "MERS-CoV",
            "MERS",
            "Varicella",
            "Legionella",
            "Streptococcus",
            "Staphylococcus",
            "Klebsiella",
            "Mycoplasma",
            "Pneumocystis",
            "Chlamydophila",
            "Influenza",
            "E.Coli",
            "Nocardia",
            "Aspergillosis",
            "Herpes",
        ],
        "PNEUMONIA",
    ),
}
METADATA_COLUMNS = ["patientid", "finding", "view", "modality", "folder", "filename"]


class CovidCollectionSource(ImageSource):
    """X-rays of the chosen views (frontal by default), findings mapped to classes by `findings`.

    A hierarchical finding ("Pneumonia/Viral/COVID-19") maps by its full text, else by its last part, else by
    its first. Left out and counted, by reason: other modalities (CT), other views (lateral), findings not in
    the table, rows whose file is missing. Patient ids are the collection's.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        metadata: str = "metadata.csv",
        views: Sequence[str] = FRONTAL_VIEWS,
        modalities: Sequence[str] = ("X-ray",),
        findings: Mapping[str, str] | None = None,
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    ) -> None:
        super().__init__(data_dir)
        self.metadata = self.data_dir / metadata
        self.views = tuple(views)
        self.modalities = tuple(modalities)
        self.findings = dict(DEFAULT_FINDINGS if findings is None else findings)
        unknown = sorted(set(self.findings.values()) - set(class_names))
        if unknown:
            raise ValueError(f"findings map to {unknown}, which are not in class_names {list(class_names)}")
        self.class_index = {name: index for index, name in enumerate(class_names)}

    def records(self) -> pd.DataFrame:
        """One record per kept metadata row, in file order."""
        if not self.metadata.is_file():
            raise FileNotFoundError(f"COVID-19 collection metadata {self.metadata} does not exist")
        table = pd.read_csv(self.metadata, dtype=str, keep_default_na=False)
        missing = [column for column in METADATA_COLUMNS if column not in table]
        if missing:
            raise ValueError(f"{self.metadata} lacks column(s) {missing}")
        rows = []
        for row in table.itertuples(index=False):
            reason, label = self._verdict(row)
            if reason is not None:
                self.excluded[reason] += 1
                continue
            path = self.data_dir / row.folder / row.filename
            rows.append((str(path), label, row.patientid, "", row.view))
        return pd.DataFrame(rows, columns=["path", "label", "patient_id", "split", "view"]).astype(
            {"label": "int64"}
        )

    def _verdict(self, row: tuple) -> tuple[str | None, int]:
        """(why the row is left out, or None; its label)."""
        if row.modality not in self.modalities:
            return f"modality {row.modality}", -1
        if row.view not in self.views:
            return f"view {row.view}", -1
        name = self._class_of(row.finding)
        if name is None:
            return f"finding {row.finding!r} not in data.source.findings", -1
        if not (self.data_dir / row.folder / row.filename).is_file():
            return "image file missing", -1
        return None, self.class_index[name]

    def _class_of(self, finding: str) -> str | None:
        """The class of a finding: by its full text, else its last, else its first '/'-separated part."""
        parts = finding.split("/")
        for key in (finding, parts[-1], parts[0]):
            if key in self.findings:
                return self.findings[key]
        return None

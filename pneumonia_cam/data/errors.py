"""Errors of the data layer that every reader raises (its own module, so readers import no reader)."""

from __future__ import annotations

import os


class ImageReadError(ValueError):
    """An image that cannot become a grayscale uint8 array; names the file so bad data is easy to find."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"Cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Keep the two-argument constructor picklable, so errors survive DataLoader worker processes."""
        return type(self), (self.path, self.reason)


class UnsupportedFormatError(ImageReadError):
    """Bytes that are none of the formats this project reads (PNG, JPEG, DICOM), judged by magic bytes."""

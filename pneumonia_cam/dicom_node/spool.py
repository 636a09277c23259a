"""Durable folders: a file is fsynced, renamed into place and its folder fsynced before it counts as stored.

The node keeps three: `incoming/` (received instances, answered with success only once here), `outbox/`
(results waiting for the destination's acknowledgement) and `failed/` (received instances the model's reader
refused after the answer). Names are SOP Instance UIDs, so a resent instance replaces its pending copy.
"""

import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

SUFFIX = ".dcm"
PARTIAL = ".part"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` survive a power cut (POSIX needs the directory synced too)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DurableFolder:
    """Files named by a key, written atomically and durably, listed oldest first."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(f"*{PARTIAL}"):  # a write a crash interrupted: never acknowledged
            leftover.unlink()

    def file(self, key: str) -> Path:
        """Where the item `key` lives."""
        return self.path / f"{key}{SUFFIX}"

    def write(self, key: str, fill: Callable[[BinaryIO], None]) -> Path:
        """`fill` writes the content; synced, moved into place and the folder synced before this returns."""
        partial = self.path / f".{key}.{uuid.uuid4().hex}{PARTIAL}"
        try:
            with partial.open("wb") as handle:
                fill(handle)
                handle.flush()
                os.fsync(handle.fileno())
            final = self.file(key)
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        fsync_dir(self.path)
        return final

    def move(self, key: str, other: "DurableFolder") -> Path:
        """Move an item to another folder on the same file system, durably in both."""
        target = other.file(key)
        os.replace(self.file(key), target)
        fsync_dir(other.path)
        fsync_dir(self.path)
        return target

    def remove(self, key: str) -> None:
        """Forget an item (done with it), durably."""
        self.file(key).unlink(missing_ok=True)
        fsync_dir(self.path)

    def pending(self) -> list[str]:
        """Items waiting, oldest first (ties by name, so the order is stable)."""
        files = [path for path in self.path.glob(f"*{SUFFIX}") if not path.name.startswith(".")]
        return [path.stem for path in sorted(files, key=lambda path: (_mtime(path), path.name))]

    def __len__(self) -> int:
        return len(self.pending())


def _mtime(path: Path) -> float:
    """Modification time; a file removed meanwhile sorts last (the next listing drops it)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class BackgroundLoop:
    """A daemon thread over a durable folder: `run` until stopped, woken early by `wake` (worker, sender)."""

    thread_name = "dicom-node"

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)

    def start(self) -> None:
        """Start with whatever an earlier run left in the folder."""
        self.thread.start()

    def stop(self) -> None:
        """Stop after the batch in hand; the rest stays in the folder for the next start."""
        self.stopping.set()
        self.wake.set()
        self.thread.join()

    def run(self) -> None:
        """The loop body (the one method subclasses write)."""
        raise NotImplementedError

"""Crash-safe small-file writes for the workdir (config, metrics rewrite, completion marker, appended rows)."""

from __future__ import annotations

import os
import pathlib
import uuid

__all__ = ["atomic_write_text", "append_line"]


def atomic_write_text(path, text: str) -> None:
    """Writes ``text`` to ``path`` so that a reader (or a crash) sees either the old file or the new one, never
    a partial file: write a temporary file in the same directory, fsync it, then ``os.replace``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_line(path, line: str) -> None:
    """Appends ``line`` and a newline to ``path`` in one write, then flushes and fsyncs, so a row is on disk
    before the next step runs; a kill can at most leave one torn last line (which readers drop with a warning)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())

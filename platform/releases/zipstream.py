"""A whole release as one zip, produced while it is sent (no temp file, never the whole release in memory)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

CHUNK = 1 << 20


class _Sink:
    """A write-only stream zipfile writes to; without tell() zipfile switches to streaming (data descriptors)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


def zip_stream(members: Iterable[tuple[str, Path, int]], date_time: tuple[int, ...]) -> Iterator[bytes]:
    """`members`: (name in the zip, file on disk, size). A fixed date_time keeps the same release's zip identical."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:  # type: ignore[arg-type]
        for name, path, size in members:
            info = zipfile.ZipInfo(name, date_time=date_time[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with path.open("rb") as src, archive.open(info, "w", force_zip64=size >= 1 << 31) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if data := sink.take():
                        yield data
            if data := sink.take():
                yield data
    if data := sink.take():
        yield data

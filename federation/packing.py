"""The adapter on the wire: one flat array plus the layout to unpack it, checked on arrival. Plain numpy.

Flower sends every Array (and every 5 MiB chunk of one) as its own signed HTTP request: a 192-tensor adapter
costs 389 requests per message per hop, one flat array 7 (../shared/FACTS.md, "Arrays on the wire"). So both
directions carry one ArrayRecord holding one 1-D array (`PACKED_KEY`) and, beside it, a ConfigRecord
(`LAYOUT_KEY`) with the tensor names in packing order, their shapes, the wire dtype, the total length and a
sha256 digest over layout and bytes together, so that a layout cannot be paired with an array it was not made for.

The receiver checks the layout against what it expects (its own LoRA model's tensors on a node, the round's
global adapter on the server): names, shapes, length, wire dtype, digest, finite values. Whatever fails raises
`PackingError` naming what and where; nothing a peer sends is trusted until it has passed.

Wire dtypes (the campaign setting `transfer-dtype`): float32 (exact), float16, bfloat16. NumPy has no bfloat16 and
Flower refuses torch's, so bfloat16 travels as int16 bit patterns (the top half of each float32, rounded to
nearest even) and is widened back on arrival. Whatever travels, the receiver gets float32: the server merges in
float32 and casts only what it sends.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from federation.config import TRANSFER_DTYPES

PACKED_KEY = "packed"  # the one Array inside the message's ArrayRecord
ARRAYS_KEY = "arrays"  # the message's ArrayRecord (Flower strategies' default arrayrecord_key)
LAYOUT_KEY = "layout"  # the ConfigRecord beside it
FORMAT = 1  # bumped when the layout's fields or the digest's recipe change

# Campaign setting (federation.config.TRANSFER_DTYPES) -> the numpy dtype the bytes travel in.
WIRE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.int16),  # bit patterns of bfloat16 (see module docstring)
}
assert tuple(WIRE_DTYPES) == TRANSFER_DTYPES, "every transfer dtype a campaign may choose needs a wire encoding"

Shapes = Mapping[str, tuple[int, ...]]


class PackingError(ValueError):
    """A packed adapter or its layout that cannot be accepted; the message says what and where."""


@dataclass(frozen=True)
class Layout:
    names: tuple[str, ...]  # packing order
    shapes: tuple[tuple[int, ...], ...]
    dtype: str  # one of TRANSFER_DTYPES
    length: int  # elements in the flat array
    digest: str  # sha256 over the header (everything above) and the array's bytes

    def header(self) -> bytes:
        """What the digest covers besides the bytes: every field that says how to read them."""
        body = {"format": FORMAT, "names": self.names, "shapes": self.shapes, "dtype": self.dtype,
                "length": self.length}  # fmt: skip
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    def to_record(self) -> ConfigRecord:
        # ConfigRecord holds flat lists only: the shapes go as each tensor's rank and all dims concatenated.
        return ConfigRecord(
            {
                "format": FORMAT,
                "names": list(self.names),
                "ranks": [len(s) for s in self.shapes],
                "dims": [d for s in self.shapes for d in s],
                "dtype": self.dtype,
                "length": self.length,
                "digest": self.digest,
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Layout:
        """Parse the peer's layout record; every field is typed and bounded here before anything uses it."""
        fields = {"format": int, "names": list, "ranks": list, "dims": list, "dtype": str, "length": int,
                  "digest": str}  # fmt: skip
        for key, kind in fields.items():
            if key not in record:
                raise PackingError(f"layout lacks {key!r}")
            if not isinstance(record[key], kind) or isinstance(record[key], bool):
                raise PackingError(f"layout {key!r} must be a {kind.__name__}")
        if record["format"] != FORMAT:
            raise PackingError(f"layout format {record['format']} is not {FORMAT} (sender runs another version)")
        names, ranks, dims = record["names"], record["ranks"], record["dims"]
        if not all(isinstance(n, str) for n in names):
            raise PackingError("layout 'names' must be strings")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*ranks, *dims]):
            raise PackingError("layout 'ranks' and 'dims' must be non-negative integers")
        if len(ranks) != len(names) or sum(ranks) != len(dims):
            raise PackingError(f"layout names {len(names)} tensors but gives {len(ranks)} ranks and {len(dims)} dims")
        shapes, at = [], 0
        for rank in ranks:
            shapes.append(tuple(dims[at : at + rank]))
            at += rank
        return cls(tuple(names), tuple(shapes), record["dtype"], record["length"], record["digest"])


def _digest(layout_header: bytes, flat: np.ndarray) -> str:
    h = hashlib.sha256(layout_header)
    h.update(np.ascontiguousarray(flat).view(np.uint8).data)
    return h.hexdigest()


def _to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns as int16, rounded to nearest even (NaN stays NaN, overflow goes to inf)."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    top = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():  # a NaN whose payload sits in the low half would round to inf or to another class: keep it NaN
        top[nan] = np.uint16(0x7FC0)
    return top.view(np.int16)


def _from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _encode(flat32: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return _to_bfloat16_bits(flat32)
    with np.errstate(over="ignore"):  # beyond float16's range becomes inf, which the receiver refuses by name
        return flat32.astype(WIRE_DTYPES[dtype])


def _decode(wire: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return _from_bfloat16_bits(wire)
    return wire.astype(np.float32)


def pack(arrays: Mapping[str, np.ndarray], dtype: str = "float32") -> tuple[np.ndarray, Layout]:
    """All tensors, in the mapping's order, as one flat array in the wire dtype, and the layout that unpacks it.

    Packs whatever it is given (a hostile node's NaN too): judging is the receiver's job.
    """
    if dtype not in WIRE_DTYPES:
        raise PackingError(f"transfer dtype {dtype!r} is not one of {', '.join(TRANSFER_DTYPES)}")
    names = tuple(arrays)
    shapes = tuple(tuple(int(d) for d in np.shape(arrays[n])) for n in names)
    parts = [np.asarray(arrays[n], dtype=np.float32).ravel() for n in names]
    flat = _encode(np.concatenate(parts) if parts else np.zeros(0, np.float32), dtype)
    unsigned = Layout(names, shapes, dtype, int(flat.size), "")
    return flat, Layout(names, shapes, dtype, int(flat.size), _digest(unsigned.header(), flat))


def unpack(flat: np.ndarray, layout: Layout, expected: Shapes, dtype: str) -> dict[str, np.ndarray]:
    """The float32 tensors, in `expected`'s order, once the layout and the array pass every check.

    `expected`: the names and shapes the receiver's own adapter has; `dtype`: the campaign's transfer dtype.
    """
    if layout.dtype != dtype:
        raise PackingError(f"wire dtype {layout.dtype!r} instead of the campaign's {dtype!r}")
    if len(set(layout.names)) != len(layout.names):
        raise PackingError("layout names a tensor twice")
    missing, unexpected = set(expected) - set(layout.names), set(layout.names) - set(expected)
    if missing:
        raise PackingError(f"missing tensors: {_names(missing)}")
    if unexpected:
        raise PackingError(f"unexpected tensors: {_names(unexpected)}")
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        if tuple(shape) != tuple(expected[name]):
            raise PackingError(f"wrong shape for {name}: {tuple(shape)} instead of {tuple(expected[name])}")
    sizes = [math.prod(s) for s in layout.shapes]
    if layout.length != sum(sizes):
        raise PackingError(f"layout length {layout.length} does not add up to its shapes ({sum(sizes)} elements)")
    if flat.ndim != 1 or flat.size != layout.length:
        raise PackingError(f"packed array has shape {tuple(flat.shape)}, the layout says ({layout.length},)")
    if flat.dtype != WIRE_DTYPES[dtype]:
        raise PackingError(f"packed array is {flat.dtype}, {dtype} travels as {WIRE_DTYPES[dtype]}")
    unsigned = Layout(layout.names, layout.shapes, layout.dtype, layout.length, "")
    if _digest(unsigned.header(), flat) != layout.digest:
        raise PackingError("layout digest does not match the array (layout and array do not belong together)")
    values = _decode(flat, dtype)
    out: dict[str, np.ndarray] = {}
    at = 0
    for name, shape, size in zip(layout.names, layout.shapes, sizes, strict=True):
        out[name] = values[at : at + size].reshape(shape)
        at += size
    for name in layout.names:
        if not np.isfinite(out[name]).all():
            raise PackingError(f"non-finite values (NaN/inf) in {name}")
    return {name: out[name] for name in expected}


def _names(keys: set[str]) -> str:
    shown = sorted(keys)[:3]
    return ", ".join(shown) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


# --- as Flower records --------------------------------------------------------------------------------------------


def pack_records(arrays: Mapping[str, np.ndarray], dtype: str) -> tuple[ArrayRecord, ConfigRecord]:
    """What goes into a message: {ARRAYS_KEY: the ArrayRecord, LAYOUT_KEY: the ConfigRecord}."""
    flat, layout = pack(arrays, dtype)
    return ArrayRecord({PACKED_KEY: Array(flat)}), layout.to_record()


def unpack_content(content: RecordDict, expected: Shapes, dtype: str) -> dict[str, np.ndarray]:
    """The float32 tensors a message carries packed; PackingError when its records are not one packed adapter."""
    if len(content.array_records) != 1:
        raise PackingError(f"expected one ArrayRecord, got {len(content.array_records)}")
    record = next(iter(content.array_records.values()))
    if list(record) != [PACKED_KEY]:
        raise PackingError(f"expected one packed array {PACKED_KEY!r}, got {len(record)} arrays")
    layout_record = content.config_records.get(LAYOUT_KEY)
    if layout_record is None:
        raise PackingError(f"no {LAYOUT_KEY!r} record beside the packed array")
    layout = Layout.from_record(layout_record)
    try:
        flat = record[PACKED_KEY].numpy()
    except (ValueError, TypeError, EOFError, OSError) as exc:  # what np.load raises on bytes that are no .npy
        raise PackingError(f"unreadable packed array: {exc}") from exc
    return unpack(flat, layout, expected, dtype)


def wire_bytes(content: RecordDict) -> int:
    """Bytes the packed adapter and its layout occupy in a message (Flower's count_bytes of both records)."""
    layout = content.config_records.get(LAYOUT_KEY)
    return sum(r.count_bytes() for r in content.array_records.values()) + (layout.count_bytes() if layout else 0)

"""The packed wire layout: one flat array and its layout, exact in float32, close in half precision, and refused
with a reason when the layout or the array was tampered with."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from federation.packing import (
    ARRAYS_KEY,
    LAYOUT_KEY,
    PACKED_KEY,
    Layout,
    PackingError,
    pack,
    pack_records,
    unpack,
    unpack_content,
    wire_bytes,
)


def adapter(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "q.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32),
        "q.lora_B.weight": (0.01 * rng.standard_normal((16, 4))).astype(np.float32),
        "v.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32),
        "bias": np.full((), rng.standard_normal(), np.float32),  # a 0-d tensor packs too
    }


def shapes(arrays: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in arrays.items()}


def message(arrays: dict[str, np.ndarray], dtype: str) -> RecordDict:
    record, layout = pack_records(arrays, dtype)
    return RecordDict({ARRAYS_KEY: record, LAYOUT_KEY: layout})


def test_float32_round_trips_exactly_through_flower_records():
    state = adapter()
    got = unpack_content(message(state, "float32"), shapes(state), "float32")
    assert list(got) == list(state)
    for name, value in state.items():
        assert got[name].dtype == np.float32 and got[name].shape == value.shape
        np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize(("dtype", "wire", "rtol"), [("float16", np.float16, 1e-3), ("bfloat16", np.int16, 8e-3)])
def test_half_precision_halves_the_bytes_and_comes_back_as_float32_within_its_rounding(dtype, wire, rtol):
    state = adapter()
    full, half = message(state, "float32"), message(state, dtype)
    flat = half.array_records[ARRAYS_KEY][PACKED_KEY].numpy()
    n = sum(v.size for v in state.values())
    assert flat.dtype == wire and flat.shape == (n,) and flat.nbytes == 2 * n
    # Two bytes saved per element; the rest (npy header, layout) is the same few hundred bytes either way.
    assert wire_bytes(full) - wire_bytes(half) in (2 * n, 2 * n - 1)  # "bfloat16" is one character longer
    got = unpack_content(half, shapes(state), dtype)
    for name, value in state.items():
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=1e-6)


def test_bfloat16_rounds_to_nearest_even_and_keeps_specials():
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.4e38, np.inf, -np.inf, np.nan], np.float32)
    flat, layout = pack({"w": values}, "bfloat16")
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0); 1 + 3*2^-8 goes up.
    back = (flat.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(back[:4], [1.0, 1.0, 1.015625, -2.5])
    assert np.isinf(back[4]) and back[5] == np.inf and back[6] == -np.inf and np.isnan(back[7])


def test_the_receiver_gets_its_own_order_whatever_the_packing_order():
    state = adapter()
    reordered = {k: state[k] for k in reversed(list(state))}
    got = unpack_content(message(reordered, "float32"), shapes(state), "float32")
    assert list(got) == list(state)
    np.testing.assert_array_equal(got["q.lora_B.weight"], state["q.lora_B.weight"])


def tampered(change) -> RecordDict:
    """A float32 message whose layout record went through `change(dict)` on the way."""
    content = message(adapter(), "float32")
    fields = dict(content.config_records[LAYOUT_KEY])
    change(fields)
    content[LAYOUT_KEY] = ConfigRecord(fields)
    return content


def swap_shapes(f: dict) -> None:
    f["dims"] = [16, 4, 4, 16, *f["dims"][4:]]  # lora_A and lora_B claim each other's shapes


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.update(names=["x.lora_A.weight", *f["names"][1:]]), "missing tensors: q.lora_A.weight"),
        (lambda f: f.update(names=[*f["names"][:3], "q.lora_A.weight"]), "names a tensor twice"),
        (swap_shapes, "wrong shape for q.lora_A.weight: (16, 4) instead of (4, 16)"),
        (lambda f: f.update(length=f["length"] + 1), "does not add up"),
        (lambda f: f.update(dtype="float16"), "wire dtype 'float16' instead of the campaign's 'float32'"),
        (lambda f: f.update(digest="0" * 64), "digest does not match"),
        (lambda f: f.pop("digest"), "layout lacks 'digest'"),
        (lambda f: f.update(ranks=[2, 2]), "names 4 tensors but gives 2 ranks"),
        (lambda f: f.update(ranks=[2, 2, 2, 1]), "names 4 tensors but gives 4 ranks and 6 dims"),
        (lambda f: f.update(format=99), "layout format 99"),
        (lambda f: f.update(dims=[-1] * len(f["dims"])), "non-negative integers"),
    ],
)
def test_a_tampered_layout_is_refused_with_the_reason(change, reason):
    with pytest.raises(PackingError, match=None) as refused:
        unpack_content(tampered(change), shapes(adapter()), "float32")
    assert reason in str(refused.value)


def test_an_unknown_tensor_is_named():
    state = adapter()
    extra = {**state, "k.lora_A.weight": np.zeros((4, 16), np.float32)}
    with pytest.raises(PackingError, match="unexpected tensors: k.lora_A.weight"):
        unpack_content(message(extra, "float32"), shapes(state), "float32")


def test_a_tampered_array_is_refused_by_the_digest():
    state = adapter()
    flat, layout = pack(state, "float32")
    flat = flat.copy()
    flat[5] += 1.0  # one value changed after packing
    with pytest.raises(PackingError, match="digest does not match"):
        unpack(flat, layout, shapes(state), "float32")


def test_an_array_of_another_length_or_dtype_is_refused_before_reading_it():
    state = adapter()
    flat, layout = pack(state, "float32")
    with pytest.raises(PackingError, match=r"packed array has shape \(10,\)"):
        unpack(flat[:10], layout, shapes(state), "float32")
    with pytest.raises(PackingError, match="packed array is float64, float32 travels as float32"):
        unpack(flat.astype(np.float64), layout, shapes(state), "float32")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_non_finite_values_are_refused_by_name_in_every_dtype(dtype):
    state = adapter()
    state["v.lora_A.weight"][2, 3] = np.nan
    with pytest.raises(PackingError, match=r"non-finite values \(NaN/inf\) in v.lora_A.weight"):
        unpack_content(message(state, dtype), shapes(adapter()), dtype)


def test_float16_overflow_becomes_inf_and_is_refused():
    state = adapter()
    state["q.lora_B.weight"][0, 0] = 1e6  # beyond float16's 65504
    with pytest.raises(PackingError, match=r"non-finite values \(NaN/inf\) in q.lora_B.weight"):
        unpack_content(message(state, "float16"), shapes(state), "float16")


def test_a_message_in_todays_per_tensor_form_is_refused():
    state = adapter()
    content = RecordDict({ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in state.items()})})
    with pytest.raises(PackingError, match="expected one packed array 'packed', got 4 arrays"):
        unpack_content(content, shapes(state), "float32")
    content = RecordDict({ARRAYS_KEY: pack_records(state, "float32")[0]})
    with pytest.raises(PackingError, match="no 'layout' record"):
        unpack_content(content, shapes(state), "float32")


def test_an_unknown_transfer_dtype_is_refused_when_packing():
    with pytest.raises(PackingError, match="transfer dtype 'int8' is not one of float32, float16, bfloat16"):
        pack(adapter(), "int8")


def test_layout_record_round_trip():
    _, layout = pack(adapter(), "float16")
    assert Layout.from_record(layout.to_record()) == layout


def test_bytes_that_are_no_array_are_refused_as_unreadable():
    state = adapter()
    content = message(state, "float32")
    real = content.array_records[ARRAYS_KEY][PACKED_KEY]
    garbage = Array(dtype=real.dtype, shape=real.shape, stype=real.stype, data=b"\x93NUMPY garbage")
    content[ARRAYS_KEY] = ArrayRecord({PACKED_KEY: garbage})
    with pytest.raises(PackingError, match="unreadable packed array"):
        unpack_content(content, shapes(state), "float32")

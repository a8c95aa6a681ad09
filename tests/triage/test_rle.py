from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from triage.data.rle import RLEError, rle_decode, rle_encode


def test_competition_example_run_positions() -> None:
    # 810584 = 791 * 1024 + 600 -> column 791, row 600; 20 pixels down the column.
    # Next start: 810584 + 20 + 1003 = 811607 = 792 * 1024 + 599 -> column 792, row 599.
    mask = rle_decode("810584 20 1003 22", 1024, 1024)
    assert mask.shape == (1024, 1024)
    assert mask.dtype == np.bool_
    cols, rows = np.nonzero(mask.T)  # column-major order of set pixels
    assert (cols[0], rows[0]) == (791, 600)
    assert mask[600:620, 791].all()
    assert not mask[599, 791] and not mask[620, 791]
    assert np.count_nonzero(mask[:, 791]) == 20
    assert mask[599:621, 792].all()
    assert not mask[598, 792] and not mask[621, 792]
    assert np.count_nonzero(mask) == 42
    assert rle_encode(mask) == "810584 20 1003 22"


def test_small_hand_computed_mask() -> None:
    # 3x4 image, column-major indices:
    #   col0: 0 1 2 | col1: 3 4 5 | col2: 6 7 8 | col3: 9 10 11
    # Runs: pixels 2..3 (bottom of col0 wrapping to top of col1), then 11 (bottom-right).
    mask = np.zeros((3, 4), dtype=bool)
    mask[2, 0] = mask[0, 1] = mask[2, 3] = True
    # offset 2, length 2 -> ends at 4; offset 11 - 4 = 7, length 1
    assert rle_encode(mask) == "2 2 7 1"
    np.testing.assert_array_equal(rle_decode("2 2 7 1", 3, 4), mask)


def test_empty_and_full() -> None:
    empty = np.zeros((5, 7), dtype=bool)
    assert rle_encode(empty) == "-1"
    np.testing.assert_array_equal(rle_decode("-1", 5, 7), empty)
    np.testing.assert_array_equal(rle_decode("  ", 5, 7), empty)
    np.testing.assert_array_equal(rle_decode(" -1 ", 5, 7), empty)
    full = np.ones((5, 7), dtype=bool)
    assert rle_encode(full) == "0 35"
    np.testing.assert_array_equal(rle_decode("0 35", 5, 7), full)


@pytest.mark.parametrize(
    ("row", "col", "expected"), [(0, 0, "0 1"), (4, 6, "34 1"), (4, 0, "4 1"), (0, 6, "30 1")]
)
def test_single_pixel_corners(row: int, col: int, expected: str) -> None:
    # Index = col * H + row with H = 5.
    mask = np.zeros((5, 7), dtype=bool)
    mask[row, col] = True
    assert rle_encode(mask) == expected
    np.testing.assert_array_equal(rle_decode(expected, 5, 7), mask)


def test_non_square_orientation() -> None:
    # H=2, W=3: index 3 is column 1, row 1 (not row 1 col 0 as row-major would give).
    mask = rle_decode("3 1", 2, 3)
    assert mask.shape == (2, 3)
    assert np.argwhere(mask).tolist() == [[1, 1]]


def test_uint8_mask_any_nonzero_is_foreground() -> None:
    mask = np.array([[0, 255], [1, 0]], dtype=np.uint8)
    assert rle_encode(mask) == "1 2"


def test_touching_runs_with_zero_offset_decode() -> None:
    np.testing.assert_array_equal(rle_decode("1 1 0 2", 2, 2), rle_decode("1 3", 2, 2))


def test_large_random_round_trip() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((1024, 1024)) < 0.3
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), 1024, 1024), mask)


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.bool_,
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        elements=st.booleans(),
    )
)
def test_round_trip_property(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    decoded = rle_decode(rle, *mask.shape)
    np.testing.assert_array_equal(decoded, mask)
    if mask.any():
        values = [int(v) for v in rle.split()]
        assert all(v >= 1 for v in values[1:])  # canonical: maximal runs, positive lengths


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of values"),
        ("1 2.5", "non-integer token '2.5'"),
        ("a 2", "non-integer token 'a'"),
        ("-3 2", "first offset -3 is negative"),
        ("0 -2", "negative length -2"),
        ("0 0", "zero-length run"),
        ("0 2 -1 2", "negative offset -1"),
        ("10 3", "runs past the image end"),
        ("0 13", "out of range"),
        ("99999999999999999999999 1", "out of range"),
    ],
)
def test_malformed_rle_errors(rle: str, message: str) -> None:
    with pytest.raises(RLEError, match=message):
        rle_decode(rle, 3, 4)


def test_rle_error_is_value_error() -> None:
    assert issubclass(RLEError, ValueError)


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="float64"):
        rle_encode(np.zeros((2, 2)))  # type: ignore[arg-type]

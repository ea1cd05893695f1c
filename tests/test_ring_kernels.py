"""The Z_2^64 matrix products and Z_2^128 word arithmetic in C (src/ppir_ring.c) against
their NumPy twins in tests/reference.py: random words over the whole ring (so every sum
and product wraps), sizes at and around the kernels' blocks (4 x 2 rows, 256 columns)."""

import numpy as np
import pytest
import reference as R

from ppir_itk import _kernels as K

SHAPES = [(1, 1, 1), (3, 5, 7), (4, 2, 256), (5, 3, 257), (9, 7, 513), (32, 32, 1000)]


def words(rng, *shape):
    return rng.integers(0, 2**64, shape, dtype=np.uint64, endpoint=False)


def window(rng, bins, count, width):
    first = rng.integers(0, bins - width + 1, count).astype(np.int64)
    first[:2] = [0, bins - width][: min(2, count)]  # both ends of the bins
    return first, words(rng, count, width)


@pytest.mark.parametrize("rows_a, rows_b, count", SHAPES)
def test_gram_and_left_match_numpy(rows_a, rows_b, count):
    rng = np.random.default_rng(rows_a * 1000 + count)
    a, b = words(rng, rows_a, count), words(rng, rows_b, count)
    out = np.empty((rows_a, rows_b), dtype=np.uint64)
    K.ring_gram(a, b, out)
    assert np.array_equal(out, R.ring_gram(a, b))
    left, right = words(rng, rows_a, rows_b), words(rng, rows_b, count)
    out = np.empty((rows_a, count), dtype=np.uint64)
    K.ring_left(left, right, out)
    assert np.array_equal(out, R.ring_left(left, right))
    out = np.empty(count, dtype=np.uint64)
    K.ring_column_dots(a, a[::-1].copy(), out)
    assert np.array_equal(out, R.ring_column_dots(a, a[::-1]))


@pytest.mark.parametrize(
    "rows, bins, count, width", [(1, 1, 1, 1), (3, 4, 5, 4), (32, 32, 1000, 4), (7, 9, 300, 3)]
)
def test_window_products_match_the_dense_ones(rows, bins, count, width):
    rng = np.random.default_rng(bins * 100 + count)
    first, weights = window(rng, bins, count, width)
    dense = words(rng, rows, count)
    out = np.empty((rows, bins), dtype=np.uint64)
    K.ring_window_gram(dense, bins, first, weights, out)
    assert np.array_equal(out, R.ring_window_gram(dense, bins, first, weights))
    left = words(rng, rows, bins)
    out = np.empty((rows, count), dtype=np.uint64)
    K.ring_window_left(left, first, weights, out)
    assert np.array_equal(out, R.ring_window_left(left, first, weights))
    mask = words(rng, bins, count)
    out = np.empty((bins, count), dtype=np.uint64)
    K.ring_window_subtract(first, weights, mask, out)
    assert np.array_equal(out, R.ring_window_subtract(first, weights, mask))


@pytest.mark.parametrize("count", [1, 2, 1001])
def test_ring128_words_match_numpy(count):
    rng = np.random.default_rng(count)
    x, y = words(rng, count, 2), words(rng, count, 2)
    x[0] = [0, 0]  # negate's carry
    y[-1] = [2**64 - 1, 2**64 - 1]  # every carry and borrow
    for kernel, twin in [
        (K.ring128_add, R.ring128_add),
        (K.ring128_subtract, R.ring128_subtract),
        (K.ring128_multiply, R.ring128_multiply),
    ]:
        out = np.empty_like(x)
        kernel(x, y, out)
        assert np.array_equal(out, twin(x, y)), kernel.__name__
    out = np.empty_like(x)
    K.ring128_negate(x, out)
    assert np.array_equal(out, R.ring128_negate(x))
    for bits in (0, 1, 28, 63, 64, 65, 127):
        K.ring128_shift_right(x, bits, out)
        assert np.array_equal(out, R.ring128_shift_right(x, bits)), bits
        for party in (0, 1):
            K.ring128_truncate(x, bits, party, out)
            assert np.array_equal(out, R.ring128_truncate(x, bits, party)), (bits, party)
    a, b, c = words(rng, count, 2), words(rng, count, 2), words(rng, count, 2)
    for party in (0, 1):
        K.ring128_beaver(x, y, a, b, c, party, out)
        assert np.array_equal(out, R.ring128_beaver(x, y, a, b, c, party)), party


def test_ring_kernels_refuse_bad_input():
    rng = np.random.default_rng(0)
    a, out = words(rng, 4, 10), np.empty((4, 4), dtype=np.uint64)
    with pytest.raises(ValueError, match="a must have dtype uint64"):
        K.ring_gram(a.view(np.int64), a, out)
    with pytest.raises(ValueError, match="b must have 10 columns"):
        K.ring_gram(a, words(rng, 4, 9), out)
    with pytest.raises(ValueError, match="out must have shape"):
        K.ring_gram(a, a, np.empty((4, 3), dtype=np.uint64))
    with pytest.raises(ValueError, match="right must have 4 rows"):
        K.ring_left(words(rng, 2, 4), words(rng, 3, 5), np.empty((2, 5), dtype=np.uint64))
    first, weights = window(rng, 8, 10, 4)
    first[3] = 5  # rows 5 .. 8 of 8 bins
    with pytest.raises(ValueError, match="every entry of first"):
        K.ring_window_gram(a, 8, first, weights, np.empty((4, 8), dtype=np.uint64))
    with pytest.raises(ValueError, match="every entry of first"):
        K.ring_window_left(words(rng, 4, 8), first, weights, np.empty((4, 10), dtype=np.uint64))
    x = words(rng, 5, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        K.ring128_add(words(rng, 5, 3), x, x)
    with pytest.raises(ValueError, match="out must not overlap x"):
        K.ring128_negate(x, x)
    with pytest.raises(ValueError, match="bits must be in"):
        K.ring128_shift_right(x, 128, np.empty_like(x))
    with pytest.raises(ValueError, match="party must be 0 or 1"):
        K.ring128_truncate(x, 3, 2, np.empty_like(x))
    with pytest.raises(ValueError, match="c must have shape"):
        K.ring128_beaver(x, x, x, x, words(rng, 4, 2), 0, np.empty_like(x))

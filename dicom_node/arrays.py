"""Array helpers shared by the volume readers and the result writers."""

from __future__ import annotations

import numpy as np

__all__ = ["c_order_copy"]


def c_order_copy(view: np.ndarray, rows: int = 8, columns: int = 32) -> np.ndarray:
    """A C-ordered copy of a 3-D view whose axes are permuted (a (Z, Y, X) stack read as (X, Y, Z), or the reverse),
    tile by tile over its last two axes: each tile's source is a few hundred kB that stay in the CPU's cache, where
    ``np.ascontiguousarray`` of the whole view reads one element per cache line. About 3 to 6 times faster for
    512 x 512 slices (0.33 -> 0.10 s for 120 float32 slices, 0.96 -> 0.16 s for 300 int16 ones, here)."""
    if view.ndim != 3:
        raise ValueError(f"a 3-D array is needed, not {view.ndim}-D")
    copy = np.empty(view.shape, dtype=view.dtype)
    for row in range(0, view.shape[1], rows):
        for column in range(0, view.shape[2], columns):
            tile = (slice(None), slice(row, row + rows), slice(column, column + columns))
            copy[tile] = view[tile]
    return copy

"""The one place that picks tile sizes and warps for fastvae's row-reduction kernels."""

from __future__ import annotations

from dataclasses import dataclass

import triton

# Widest column block a program loads at once; longer rows loop over blocks.
MAX_BLOCK_COLS = 1024
# Elements a program holds per tile: rows are packed together when rows are short.
TILE_ELEMENTS = 2048
MAX_BLOCK_ROWS = 64


@dataclass(frozen=True)
class RowTiling:
    """A program covers ``block_rows`` rows and walks their columns ``block_cols`` at a time."""

    block_rows: int
    block_cols: int
    num_warps: int

    def grid(self, n_rows: int) -> tuple[int]:
        return (triton.cdiv(n_rows, self.block_rows),)


def row_tiling(n_cols: int) -> RowTiling:
    """Tiling for rows of length ``n_cols`` (any positive length: no power-of-two assumption).

    >>> row_tiling(784)
    RowTiling(block_rows=2, block_cols=1024, num_warps=8)
    """
    block_cols = min(triton.next_power_of_2(max(n_cols, 1)), MAX_BLOCK_COLS)
    block_rows = max(1, min(MAX_BLOCK_ROWS, TILE_ELEMENTS // block_cols))
    num_warps = 8 if block_rows * block_cols > 1024 else 4
    return RowTiling(block_rows, block_cols, num_warps)

"""The one place that picks tile sizes and warps for fastvae's row-reduction kernels, and the
dtype they accumulate in."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

# Programs that fill a GPU: two per SM of a 132-SM H100 (an A100 has 108). Below this many,
# the launchers choose smaller programs, down to one warp.
FILL_PROGRAMS = 264

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


def row_tiling(n_cols: int, n_rows: int | None = None) -> RowTiling:
    """Tiling for rows of length ``n_cols`` (any positive length: no power-of-two assumption);
    given ``n_rows``, fewer rows per program while the programs would not fill the GPU.

    >>> row_tiling(784), row_tiling(784, n_rows=100)
    (RowTiling(block_rows=2, block_cols=1024, num_warps=8), RowTiling(block_rows=1, block_cols=1024, num_warps=4))
    """
    block_cols = min(triton.next_power_of_2(max(n_cols, 1)), MAX_BLOCK_COLS)
    block_rows = max(1, min(MAX_BLOCK_ROWS, TILE_ELEMENTS // block_cols))
    if n_rows is not None:
        while block_rows > 1 and triton.cdiv(n_rows, block_rows) < FILL_PROGRAMS:
            block_rows //= 2
    num_warps = 8 if block_rows * block_cols > 1024 else 4
    return RowTiling(block_rows, block_cols, num_warps)


# ---- elementwise passes (the likelihood backward): a 2-D grid of row blocks x column blocks ----

ELEMENTWISE_BLOCK_COLS = 128  # 512 B of float32 per row and block: coalesced, and many column blocks
ELEMENTWISE_TILE = 2048  # elements per program and row block (16 per thread at 4 warps), fewer at small N
MIN_ELEMENTWISE_TILE = 512
# A sum over rows (reduce_rows) is written as partial sums by this many programs at most: four
# per SM of an H100, each walking many row blocks.
REDUCE_PROGRAMS = 2 * FILL_PROGRAMS


@dataclass(frozen=True)
class ElementwiseTiling:
    """Program (i, j) covers rows [i, i + 1) * rows_per_program, BLOCK_ROWS at a time, and
    columns [j, j + 1) * block_cols. ``row_programs`` is the grid's first dimension."""

    block_rows: int
    block_cols: int
    rows_per_program: int
    row_programs: int
    num_warps: int

    def grid(self, n_cols: int) -> tuple[int, int]:
        return (self.row_programs, triton.cdiv(n_cols, self.block_cols))


def elementwise_tiling(n_rows: int, n_cols: int, reduce_rows: bool = False) -> ElementwiseTiling:
    """Tiles halved (down to MIN_ELEMENTWISE_TILE) while the grid would not fill the GPU. With
    ``reduce_rows`` (a sum over rows, e.g. a broadcast logvar's gradient) each program walks
    many row blocks so that at most ~REDUCE_PROGRAMS programs write partial sums.

    >>> elementwise_tiling(100, 784)
    ElementwiseTiling(block_rows=4, block_cols=128, rows_per_program=4, row_programs=25, num_warps=2)
    >>> elementwise_tiling(65536, 3072, reduce_rows=True).row_programs
    22
    """
    block_cols = min(triton.next_power_of_2(max(n_cols, 1)), ELEMENTWISE_BLOCK_COLS)
    col_blocks = triton.cdiv(max(n_cols, 1), block_cols)
    tile = ELEMENTWISE_TILE
    while tile > MIN_ELEMENTWISE_TILE and triton.cdiv(n_rows, max(1, tile // block_cols)) * col_blocks < FILL_PROGRAMS:
        tile //= 2
    block_rows = max(1, tile // block_cols)
    row_blocks = triton.cdiv(n_rows, block_rows)
    blocks_per_program = triton.cdiv(row_blocks, max(1, REDUCE_PROGRAMS // col_blocks)) if reduce_rows else 1
    rows_per_program = block_rows * max(1, blocks_per_program)
    return ElementwiseTiling(block_rows, block_cols, rows_per_program, triton.cdiv(n_rows, rows_per_program),
                             max(1, min(4, block_rows * block_cols // 256)))


# ---- latent head: the unit of work is a quad, four consecutive columns of one row (one Philox call) ----

QUAD = 4
WARP = 32
# At most 8 warps x 4 quads per thread in one program; rows longer than this (Z > 4096) are
# walked in chunks of this many quads.
MAX_QUADS_PER_PROGRAM = 1024
MAX_WARPS = 8


@dataclass(frozen=True)
class LatentForwardTiling:
    """A program holds ``rows`` whole rows laid out flat over ``quads`` quads (one row in chunks if ``chunked``)."""

    rows: int
    quads: int
    chunked: bool
    num_warps: int

    def grid(self, n_rows: int) -> tuple[int]:
        return (triton.cdiv(n_rows, self.rows),)


def latent_forward_tiling(n_rows: int, n_cols: int) -> LatentForwardTiling:
    """The smallest program (one warp, or the power of two of quads that holds a row) while the
    programs would not fill the GPU, doubled up to 8 warps for large N (fewer idle quads: at most
    ceil(Z/4) - 1 per program).

    >>> latent_forward_tiling(128, 20), latent_forward_tiling(65536, 200)
    (LatentForwardTiling(rows=6, quads=32, chunked=False, num_warps=1), LatentForwardTiling(rows=5, quads=256, chunked=False, num_warps=8))
    """
    quads_per_row = triton.cdiv(max(n_cols, 1), QUAD)
    if quads_per_row > MAX_QUADS_PER_PROGRAM:
        return LatentForwardTiling(1, MAX_QUADS_PER_PROGRAM, True, MAX_WARPS)
    quads = max(WARP, triton.next_power_of_2(quads_per_row))
    while quads < WARP * MAX_WARPS and triton.cdiv(n_rows, 2 * quads // quads_per_row) >= FILL_PROGRAMS:
        quads *= 2
    return LatentForwardTiling(quads // quads_per_row, quads, False, min(MAX_WARPS, quads // WARP))


@dataclass(frozen=True)
class FlatTiling:
    """A program covers ``quads`` consecutive quads of the row-major (N, ceil(Z/4)) grid of quads."""

    quads: int
    num_warps: int

    def grid(self, n_rows: int, n_cols: int) -> tuple[int]:
        return (triton.cdiv(n_rows * triton.cdiv(n_cols, QUAD), self.quads),)


def latent_backward_tiling(n_rows: int, n_cols: int) -> FlatTiling:
    """One quad per thread; 8 warps per program, fewer while that leaves fewer than FILL_PROGRAMS programs.

    >>> latent_backward_tiling(128, 20), latent_backward_tiling(65536, 200)
    (FlatTiling(quads=32, num_warps=1), FlatTiling(quads=256, num_warps=8))
    """
    total = n_rows * triton.cdiv(max(n_cols, 1), QUAD)
    quads = WARP * MAX_WARPS
    while quads > WARP and triton.cdiv(total, quads) < FILL_PROGRAMS:
        quads //= 2
    return FlatTiling(quads, quads // WARP)


def accumulation_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype a launch accumulates and returns results in: float64 if any given tensor is
    float64, else float32 (``None``s are skipped); as ``fastvae.reference.accumulation_dtype``.

    >>> accumulation_dtype(torch.zeros(2, dtype=torch.bfloat16), None)
    torch.float32
    """
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32

"""The order of training rows: one rule for every task (store features, images, labels).

Global batch ``step`` holds rows ``perm(seed, epoch)[i * B:(i + 1) * B]`` with
``epoch, i = divmod(step, steps_per_epoch)`` (drop-last), and each rank takes its contiguous
slice, so N processes read exactly what one process reads, and a resumed run reads exactly the
batches an uninterrupted run would.
"""

from __future__ import annotations

import numpy as np

from vlalign.errors import UserError


class StepOrder:
    """This rank's rows of each global batch, as a pure function of (seed, step)."""

    def __init__(self, rows: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, noun: str = "training rows",
                 error: type[UserError] = UserError) -> None:
        if batch_size > rows:
            raise error(f"batch size {batch_size} exceeds the {rows} {noun}")
        if batch_size % world_size:
            raise error(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = rows // batch_size
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def global_rows(self, step: int) -> np.ndarray:
        """Every row of global batch ``step``, in batch order."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
            self._epoch = epoch
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]

    def rows_of(self, step: int) -> np.ndarray:
        """This rank's rows of global batch ``step``."""
        local = self.batch_size // self.world_size
        return self.global_rows(step)[self.rank * local:(self.rank + 1) * local]

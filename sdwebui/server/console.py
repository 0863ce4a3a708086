"""The server's console while it works, as A1111's: one tqdm bar per generation job over all of its steps
("txt2img 3f2a1c9e: 100%|████| 40/40 [00:06<00:00, 6.5step/s]"), left as one line when the job ends.

Bars are drawn where the console is a terminal (tqdm's `disable=None`), so a server whose output goes to a log
file or a test's captured stderr gets no carriage-return noise."""

from __future__ import annotations

import sys
from typing import IO, Any


class JobConsoleBar:
    """A job's bar; `show(progress)` after each step (a `queue.Progress`: step, steps, batch, batches)."""

    def __init__(self, label: str, *, stream: IO[str] | None = None, disable: bool | None = None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.disable = disable
        self._bar: Any = None
        self._pass = (-1, 0, 0)
        """(batch, steps, last step) of the pass running now: the step count restarts with each batch and pass."""
        self._steps_before = 0

    def show(self, progress) -> None:
        batch, steps, last_step = self._pass
        if (progress.batch_index, progress.total_steps) != (batch, steps) or progress.step < last_step:
            self._steps_before += last_step
        self._pass = (progress.batch_index, progress.total_steps, progress.step)
        done = self._steps_before + progress.step
        # The first pass's length times the batches; it grows when a hires pass adds steps.
        planned = max(1, progress.batch_count) * max(1, progress.total_steps)
        if self._bar is None:
            # Made at the first step, so a job that fails while its model loads leaves no empty bar.
            from tqdm import tqdm

            self._bar = tqdm(total=planned, desc=self.label, unit="step", file=self.stream, disable=self.disable,
                             dynamic_ncols=True, mininterval=0.5)
        remaining_batches = max(0, progress.batch_count - progress.batch_index - 1)
        self._bar.total = max(self._bar.total, done + (progress.total_steps - progress.step)
                              + remaining_batches * progress.total_steps)
        self._bar.n = done
        if progress.batch_count > 1:
            self._bar.set_postfix_str(f"batch {progress.batch_index + 1}/{progress.batch_count}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = ["JobConsoleBar"]

"""What a training says while it runs: notes, a line per epoch, a bar over each epoch's steps.

The library calls a `TrainReporter`; ``train(progress=True)`` and the CLI use `StderrReporter`.
"""

from __future__ import annotations

import sys


class TrainReporter:
    """Progress of a training. This one says nothing."""

    def note(self, line: str) -> None:
        """Something the reader should know before the epochs (a resume, a changed classifier)."""

    def epoch(self, line: str) -> None:
        """An epoch ended: its loss, scores and the time left."""

    def bar(self, epoch: int, epochs: int, steps: int):
        """A progress object for the epoch's steps (``update``, ``set_postfix``, ``close``), or
        None for none."""
        return None


class StderrReporter(TrainReporter):
    """Notes and epoch lines on stderr, under a tqdm bar per epoch."""

    def note(self, line: str) -> None:
        print(line, file=sys.stderr)

    epoch = note

    def bar(self, epoch: int, epochs: int, steps: int):
        from tqdm.auto import tqdm

        return tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", file=sys.stderr, leave=False)

"""How the library says what it is doing: one `Reporter` for a search and a training. The
library calls a reporter and prints nothing itself; ``search(progress=...)`` and
``train(progress=...)`` take one (True: `BarReporter`, False: the silent `Reporter`), and the CLI
picks `BarReporter`, or `LineReporter` with ``--quiet``. Subclass `Reporter` and override what you
want to hear."""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Epoch:
    """An epoch that ended: of a training (``line``: its loss, scores and the time left), or of
    a search's trial in training (``trial``: its number; with Ray, only the epochs of its first
    training, those its workers report to ASHA)."""

    epoch: int
    epochs: int
    line: str = ""
    trial: int | None = None


class Reporter:
    """Progress of a search or a training. This one says nothing."""

    def note(self, line: str) -> None:
        """Work outside the epochs and trials: a dense start, a resume, a changed classifier."""

    def start(self, header: str, total: int, done: int) -> None:
        """A search began: ``done`` of its ``total`` trials are finished already."""

    def trial(self, line: str, best_top1: float | None) -> None:
        """A search's trial ended (``line``: `nas.progress.trial_line`)."""

    def epoch(self, e: Epoch) -> None:
        """An epoch ended."""

    def bar(self, epoch: int, epochs: int, steps: int):
        """A progress object for a training epoch's steps (``update``, ``set_postfix``,
        ``close``), or None for none."""
        return None

    def close(self) -> None:
        """The search ended."""


class LineReporter(Reporter):
    """A line on stderr per note, finished trial and training epoch."""

    def note(self, line):
        print(line, file=sys.stderr)

    def start(self, header, total, done):
        print(header, file=sys.stderr)

    def trial(self, line, best_top1):
        print(line, file=sys.stderr)

    def epoch(self, e):
        if e.line:
            print(e.line, file=sys.stderr)


class BarReporter(LineReporter):
    """`LineReporter` under a tqdm bar: over a search's trials (the epoch of the trial in training
    beside it), over each training epoch's steps."""

    trials_bar = None
    best = ""

    def start(self, header, total, done):
        from tqdm.auto import tqdm

        super().start(header, total, done)
        self.trials_bar = tqdm(
            total=total, initial=done, desc="trials", unit="trial", file=sys.stderr,
            dynamic_ncols=True,
        )  # fmt: skip

    def trial(self, line, best_top1):
        if self.trials_bar is None:
            return super().trial(line, best_top1)
        self.trials_bar.update(1)
        if best_top1 is not None:
            self.best = f"best top-1 {best_top1:.4f}"
            self.trials_bar.set_postfix_str(self.best)
        self.trials_bar.write(line)

    def epoch(self, e):
        if e.trial is None or self.trials_bar is None:
            return super().epoch(e)
        self.trials_bar.set_postfix_str(
            f"trial {e.trial}: epoch {e.epoch}/{e.epochs}" + (f", {self.best}" if self.best else "")
        )

    def bar(self, epoch, epochs, steps):
        from tqdm.auto import tqdm

        return tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", file=sys.stderr, leave=False)

    def close(self):
        if self.trials_bar is not None:
            self.trials_bar.close()

"""What a search says while it runs: a line per finished trial, optionally under a tqdm bar.

The library calls a `Reporter`; the CLI picks `BarReporter` (or `LineReporter` with ``--quiet``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ledger import TrialRecord


def trial_line(r: TrialRecord) -> str:
    """The progress line of a finished trial."""
    madds = f"{r.madds / 1e6:.1f}M" if r.madds is not None else "?"
    # the predicted latency, when the search uses it, in a column of its own after the MADDs
    lat = f" {r.latency_ms:7.1f} ms" if r.latency_ms is not None else ""
    if r.state == "FAIL":
        return f"trial {r.trial:>3}  FAIL      {madds:>9}{lat}  (failed; the search goes on)"
    if not r.feasible:
        if r.over == ("latency",):
            return f"trial {r.trial:>3}  over latency {madds:>6}{lat}  not trained"
        return f"trial {r.trial:>3}  over budget {madds:>7}{lat}  not trained"
    if r.stopped_at is not None:
        epoch, top1 = r.stopped_at
        return (
            f"trial {r.trial:>3}  STOPPED   {madds:>9}{lat}  top-1 {top1 or 0:.4f} after epoch "
            f"{epoch} (ASHA within its MADD band)"
        )
    return (
        f"trial {r.trial:>3}  COMPLETE  {madds:>9}{lat}  top-1 {r.top1:.4f}"
        + ("  untrained: not clearly above chance, kept off the front" if r.untrained else "")
        + (f"  ({r.preset})" if r.preset else "")
    )


class Reporter:
    """Progress of a search. This one says nothing; `LineReporter` and `BarReporter` write to
    stderr."""

    shows = False  # whether it writes to stderr (then trainings before the trials show theirs)

    def start(self, header: str, total: int, done: int) -> None:
        pass

    def trial(self, line: str, best_top1: float | None) -> None:
        pass

    def epoch(self, trial: int, epoch: int, epochs: int) -> None:
        """A trial in training finished an epoch (with Ray, only the epochs of its first training:
        those its workers report to ASHA)."""

    def note(self, line: str) -> None:
        """Work before the trials (the dense start)."""

    def close(self) -> None:
        pass


class LineReporter(Reporter):
    """A line on stderr per finished trial."""

    shows = True

    def start(self, header, total, done):
        print(header, file=sys.stderr)

    def note(self, line):
        print(line, file=sys.stderr)

    def trial(self, line, best_top1):
        print(line, file=sys.stderr)


class BarReporter(LineReporter):
    """A tqdm bar on stderr, with a line per finished trial above it."""

    def start(self, header, total, done):
        from tqdm.auto import tqdm

        super().start(header, total, done)
        self.bar = tqdm(
            total=total,
            initial=done,
            desc="trials",
            unit="trial",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.best = ""

    def trial(self, line, best_top1):
        self.bar.update(1)
        if best_top1 is not None:
            self.best = f"best top-1 {best_top1:.4f}"
            self.bar.set_postfix_str(self.best)
        self.bar.write(line)

    def epoch(self, trial, epoch, epochs):
        self.bar.set_postfix_str(
            f"trial {trial}: epoch {epoch}/{epochs}" + (f", {self.best}" if self.best else "")
        )

    def close(self):
        self.bar.close()

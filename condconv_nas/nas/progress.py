"""The line a search reports for a finished trial (to `progress.Reporter.trial`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import TrialRecord


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

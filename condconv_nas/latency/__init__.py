"""Latency on this machine: predicted from a per-block table (built once, cached on disk) and
measured on whole networks. See docs/latency.md."""

from .predict import (
    build_table,
    check_batch,
    measure_latencies,
    measure_latency,
    predict_latency,
    table_info,
)

__all__ = [
    "build_table",
    "check_batch",
    "measure_latencies",
    "measure_latency",
    "predict_latency",
    "table_info",
]

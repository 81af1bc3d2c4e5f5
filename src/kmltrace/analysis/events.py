"""Merge every input's events into one table, in time order where sources share a clock."""

from __future__ import annotations

import polars as pl

from kmltrace.capture import Capture


def merged_events(capture: Capture) -> pl.LazyFrame:
    """All events of `capture`, sorted by ``ts_ns`` then ``seq`` within a source.

    Sources without time (a QEMU log) keep their own order in ``seq`` after the timed ones.
    """
    return capture.events().sort(["ts_ns", "source", "file", "seq"], nulls_last=True,
                                 maintain_order=True)

"""Episodes: runs of "active" samples, tracked across batches so each is found exactly once.

Two consecutive active samples i < j belong to one episode when no break lies between them and
either they are neighbours in the stream or they are at most `merge_gap_ms` apart. A break sits
before any sample whose distance to its predecessor exceeds `bridge_ms` (a data gap) and before any
sample a trigger marks (e.g. the vehicle moved). Aggregates are associative (max, min, sum, last),
so an episode cut by a batch boundary ends with exactly the values it would have had in one batch.
An episode is reported closed only once no later sample can extend it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

_REDUCE = {"max": np.maximum, "min": np.minimum, "sum": np.add}


@dataclass
class Episode:
    """One episode: first/last active sample time (epoch ms), active sample count, aggregates.

    `peak_ms` is the time of the first maximum of the tracker's peak aggregate; `fired` lets a
    trigger fire while the episode is still open (stop_not_go) and not again when it closes.
    """

    start_ms: int
    end_ms: int
    n: int
    aggs: dict[str, float]
    peak_ms: int
    fired: bool = False

    def snapshot(self) -> dict[str, Any]:
        return {"s": self.start_ms, "e": self.end_ms, "n": self.n, "a": self.aggs, "p": self.peak_ms,
                "f": self.fired}

    @classmethod
    def restore(cls, d: Mapping[str, Any]) -> Episode:
        return cls(d["s"], d["e"], d["n"], dict(d["a"]), d["p"], d["f"])


@dataclass
class EpisodeTracker:
    """Streaming episode finder over one time series (pose samples or 1 Hz summary rows).

    `aggs` maps aggregate name → reducer ("max", "min", "sum", "last", or "changes": how often the
    value differs between consecutive active samples of the episode, e.g. yaw-rate sign flips);
    `peak` names the "max" aggregate whose arg-max gives `Episode.peak_ms`.
    """

    merge_gap_ms: int
    bridge_ms: int
    aggs: Mapping[str, str]
    peak: str | None = None
    open: Episode | None = None
    last_sample_ms: int = -1

    def update(self, t_ms: np.ndarray, idx: np.ndarray, values: Mapping[str, np.ndarray],
               horizon_ms: int, extra_breaks: np.ndarray | None = None) -> list[Episode]:
        """Feed one batch; return the episodes that closed.

        t_ms (n,) int64 strictly increasing sample times, all > the previous batch's; idx (a,)
        ascending indices of the active samples; values: aggregate name → (a,) float64 at those
        samples; horizon_ms: no later batch holds a sample before this time; extra_breaks (n,) bool:
        a break before sample i.
        """
        closed: list[Episode] = []
        n = t_ms.size
        # Break positions are few (data gaps, trigger-specific breaks); found with one pass.
        breaks = np.diff(t_ms, prepend=self.last_sample_ms) > self.bridge_ms
        if extra_breaks is not None:
            breaks |= extra_breaks
        bpos = np.flatnonzero(breaks)
        last_end_idx = -1
        if idx.size:
            ta = t_ms[idx]
            seg = np.searchsorted(bpos, idx, side="right")
            new = np.empty(idx.size, dtype=bool)
            new[0] = True
            new[1:] = ((np.diff(ta) > self.merge_gap_ms) & (np.diff(idx) > 1)) | (np.diff(seg) != 0)
            starts = np.flatnonzero(new)
            ends = np.append(starts[1:], idx.size) - 1
            red = {}
            for name, how in self.aggs.items():
                va = values[name]
                if how == "changes":
                    flips = np.zeros(va.size)
                    flips[1:] = va[1:] != va[:-1]
                    red[name] = np.add.reduceat(flips, starts) - flips[starts]
                    red[name + "~first"] = va[starts]
                    red[name + "~last"] = va[ends]
                else:
                    red[name] = va[ends] if how == "last" else _REDUCE[how].reduceat(va, starts)
            peaks = self._peak_times(ta, starts, red, values)
            lists = {k: v.tolist() for k, v in red.items()}
            ta_l, peaks_l = ta.tolist(), peaks.tolist() if peaks is not None else None
            groups = [
                Episode(ta_l[s], ta_l[e], e - s + 1, {k: v[g] for k, v in lists.items()},
                        peaks_l[g] if peaks_l is not None else ta_l[s])
                for g, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))
            ]
            if self.open is not None:
                adjacent = idx[0] == 0 and self.open.end_ms == self.last_sample_ms
                near = ta_l[0] - self.open.end_ms <= self.merge_gap_ms
                if seg[0] == 0 and (adjacent or near):
                    groups[0] = self._merge(self.open, groups[0])
                else:
                    closed.append(self.open)
            closed.extend(groups[:-1])
            self.open = groups[-1]
            last_end_idx = int(idx[ends[-1]])
        if self.open is not None and n:
            broken_after = bpos.size > (np.searchsorted(bpos, last_end_idx, side="right") if last_end_idx >= 0 else 0)
            self.last_sample_ms = int(t_ms[-1])
            if broken_after or self._cannot_extend(horizon_ms):
                closed.append(self.open)
                self.open = None
        elif n:
            self.last_sample_ms = int(t_ms[-1])
        elif self.open is not None and self._cannot_extend(horizon_ms):
            closed.append(self.open)
            self.open = None
        return closed

    def close(self) -> list[Episode]:
        """End of stream: the open episode, if any, closes."""
        out = [self.open] if self.open is not None else []
        self.open = None
        return out

    def _cannot_extend(self, horizon_ms: int) -> bool:
        # A neighbour-in-stream may follow within bridge_ms; otherwise only a sample within merge gap.
        reach = self.bridge_ms if self.open.end_ms == self.last_sample_ms else self.merge_gap_ms
        return horizon_ms - self.open.end_ms > reach

    def _peak_times(self, ta: np.ndarray, starts: np.ndarray, red: Mapping[str, np.ndarray],
                    values: Mapping[str, np.ndarray]) -> np.ndarray | None:
        if self.peak is None:
            return None
        va = values[self.peak]
        counts = np.diff(np.append(starts, va.size))
        at_peak = np.flatnonzero(va == np.repeat(red[self.peak], counts))
        group = np.searchsorted(starts, at_peak, side="right") - 1
        _, first = np.unique(group, return_index=True)
        return ta[at_peak[first]]

    def _merge(self, a: Episode, b: Episode) -> Episode:
        aggs = {}
        for name, how in self.aggs.items():
            if how == "changes":
                joint = a.aggs[name + "~last"] != b.aggs[name + "~first"]
                aggs[name] = a.aggs[name] + b.aggs[name] + float(joint)
                aggs[name + "~first"] = a.aggs[name + "~first"]
                aggs[name + "~last"] = b.aggs[name + "~last"]
            elif how == "last":
                aggs[name] = b.aggs[name]
            else:
                aggs[name] = float(_REDUCE[how](a.aggs[name], b.aggs[name]))
        peak_ms = a.peak_ms
        if self.peak is not None and b.aggs[self.peak] > a.aggs[self.peak]:
            peak_ms = b.peak_ms
        return Episode(a.start_ms, b.end_ms, a.n + b.n, aggs, peak_ms, a.fired)

    def snapshot(self) -> dict[str, Any]:
        return {"open": self.open.snapshot() if self.open else None, "last": self.last_sample_ms}

    def restore(self, d: Mapping[str, Any]) -> None:
        self.open = Episode.restore(d["open"]) if d["open"] else None
        self.last_sample_ms = d["last"]

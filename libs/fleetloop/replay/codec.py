"""Fixed-point delta coding of tracks, trajectories and map polylines for the ScenarioSolutionPair.

A channel (x, y, heading or speed of N rows over L steps, with a validity mask) is coded as:

1. **quantise** each valid value to an integer, q = round(value / step), in float64. Heading is first
   unwrapped along the row's valid steps, so a turn across ±π stays a small step;
2. take the n-th order **differences** of q along the row's valid steps only (invalid steps are not
   coded at all; the validity bitmap travels beside the stream), the first difference against 0;
3. write them as **zigzag base-128 varints** (protobuf's sint encoding), one packed byte stream per row.

Decoding is exact integer arithmetic (cumulative sums of the differences), so the error of every valid
value is the quantisation alone: at most step / 2 (for heading: of the angular distance, decoded into
[-π, π)), plus the float32 rounding of the decoded number (2^-24 of its magnitude), and it never
accumulates along a track. Defaults (`replay.yaml`, `codec:`): position 0.01 m (≤ 5 mm), heading
0.001 rad (≤ 0.0005 rad), speed 0.01 m/s (≤ 0.005 m/s). With second-order differences, motion at
constant velocity codes as zeros and everything under ±6 m/s² of acceleration at 0.1 s and 1 cm in one
byte per value.

Every step is vectorised over all rows at once (numpy); the only per-row work is slicing the one byte
buffer into the per-row streams a protobuf message needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fleetloop.v1 import replay_pb2

CHANNELS = ("x", "y", "heading", "speed")
MAX_QUANTA = 2 ** 53        # |value / step| beyond this has no exact float64 integer: refuse, never wrap
MAX_ORDER = 3
VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)  # a value below 2^7k fits k bytes


@dataclass(frozen=True)
class Quantisation:
    """Quantisation steps: position (m), heading (rad), speed (m/s). Error bound of each is step / 2."""

    position_step_m: float
    heading_step_rad: float
    speed_step_mps: float

    @classmethod
    def from_config(cls, codec: Mapping[str, Any]) -> Quantisation:
        """From the `codec:` section of replay.yaml."""
        return cls(float(codec["position_step_m"]), float(codec["heading_step_rad"]), float(codec["speed_step_mps"]))

    @classmethod
    def from_proto(cls, msg: replay_pb2.Quantisation) -> Quantisation:
        quant = cls(msg.position_step_m, msg.heading_step_rad, msg.speed_step_mps)
        quant.check()
        return quant

    def to_proto(self) -> replay_pb2.Quantisation:
        return replay_pb2.Quantisation(position_step_m=self.position_step_m, heading_step_rad=self.heading_step_rad,
                                       speed_step_mps=self.speed_step_mps)

    def step(self, channel: str) -> float:
        """The step of a channel (x, y: position; heading; speed), as float32 stores it in the proto."""
        value = {"x": self.position_step_m, "y": self.position_step_m, "heading": self.heading_step_rad,
                 "speed": self.speed_step_mps}[channel]
        return float(np.float32(value))

    def check(self) -> None:
        for name in ("position_step_m", "heading_step_rad", "speed_step_mps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"quantisation {name} must be a positive number, got {value}")


def as_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A CPU numpy view of a tensor or array (the codec works on host bytes)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


# --- varints -------------------------------------------------------------------------------------------

def encode_varints(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Zigzag base-128 varints of int64 `values` [N], concatenated; also the byte length of each [N]."""
    v = np.asarray(values, dtype=np.int64)
    u = ((v << 1) ^ (v >> 63)).view(np.uint64)                     # zigzag: 0, -1, 1, -2 -> 0, 1, 2, 3
    lengths = 1 + np.searchsorted(VARINT_LIMITS, u, side="right").astype(np.int64)
    owner = np.repeat(np.arange(u.size), lengths)
    start = np.cumsum(lengths) - lengths
    pos = np.arange(int(lengths.sum())) - start[owner]
    chunk = (u[owner] >> (7 * pos).astype(np.uint64)) & np.uint64(0x7F)
    more = (pos < lengths[owner] - 1).astype(np.uint64) << np.uint64(7)
    return (chunk | more).astype(np.uint8).tobytes(), lengths


def decode_varints(data: bytes) -> np.ndarray:
    """Inverse of `encode_varints`: int64 values [N]. ValueError on a truncated or over-long varint."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    end = (b & 0x80) == 0
    if not end[-1]:
        raise ValueError("varint stream truncated: the last byte has its continuation bit set")
    ends = np.flatnonzero(end)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) >= 10:
        raise ValueError("varint longer than 10 bytes (not a 64-bit value)")
    owner = np.repeat(np.arange(ends.size), ends - starts + 1)
    pos = np.arange(b.size) - starts[owner]
    terms = (b & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    u = np.bitwise_or.reduceat(terms, starts)
    return (u >> np.uint64(1)).astype(np.int64) ^ -(u & np.uint64(1)).astype(np.int64)


# --- segmented differences -------------------------------------------------------------------------------

def _row_starts(rows: np.ndarray) -> np.ndarray:
    """Mask [M] of the first element of each row in the flat valid-element order."""
    first = np.ones(rows.shape, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return first


def _diff(q: np.ndarray, first: np.ndarray, order: int) -> np.ndarray:
    for _ in range(order):
        prev = np.empty_like(q)
        prev[1:] = q[:-1]
        prev[first] = 0
        q = q - prev
    return q


def _undiff(d: np.ndarray, first: np.ndarray, order: int) -> np.ndarray:
    """Row-wise cumulative sums: a global cumsum minus the running total at each row's start (exact in int64)."""
    row = np.cumsum(first) - 1
    for _ in range(order):
        total = np.cumsum(d)
        before = (total - d)[first]
        d = total - before[row]
    return d


def _unwrap(h: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Unwrap angles along each row's valid steps: each step becomes its wrapped difference to the previous."""
    step = np.empty_like(h)
    step[1:] = h[1:] - h[:-1]
    step = (step + math.pi) % (2 * math.pi) - math.pi
    step[first] = h[first]
    row = np.cumsum(first) - 1
    total = np.cumsum(step)
    return total - (total - step)[first][row]


# --- channels -------------------------------------------------------------------------------------------

def encode_channel(values: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray, step: float, order: int,
                   angular: bool = False, name: str = "values") -> list[bytes]:
    """Code one channel of N rows: `values` [N, L] (any float dtype), `valid` [N, L] bool -> N byte streams.

    Only valid steps are coded (their values may not be NaN or infinite; invalid steps may hold anything).
    `step` is the quantisation step in the channel's unit; `order` the difference order (1..3);
    `angular` unwraps radians first. ValueError names the row and step of a bad value.
    """
    v = as_numpy(values).astype(np.float64)
    m = as_numpy(valid).astype(bool)
    if v.ndim != 2 or v.shape != m.shape:
        raise ValueError(f"{name}: values {v.shape} and valid {m.shape} must be the same [rows, steps] shape")
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"delta order must be 1..{MAX_ORDER}, got {order}")
    bad = m & ~np.isfinite(v)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(f"{name}: NaN or infinite value at valid row {row}, step {col}")
    rows = np.nonzero(m)[0]
    flat = v[m]
    first = _row_starts(rows)
    if angular:
        flat = _unwrap(flat, first)
    scaled = np.round(flat / step)
    if scaled.size and float(np.abs(scaled).max()) > MAX_QUANTA:
        row = int(rows[int(np.abs(scaled).argmax())])
        raise ValueError(f"{name}: row {row} has a value beyond the codec's range (±{MAX_QUANTA} × {step})")
    data, lengths = encode_varints(_diff(scaled.astype(np.int64), first, order))
    sizes = np.zeros(v.shape[0], dtype=np.int64)
    np.add.at(sizes, rows, lengths)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    return [data[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def decode_channel(streams: Sequence[bytes], valid: np.ndarray, step: float, order: int, angular: bool = False,
                   name: str = "values") -> np.ndarray:
    """Inverse of `encode_channel`: float32 [N, L], 0 at invalid steps; headings wrapped into [-π, π) (float32
    rounding may land one on π itself).
    ValueError when a stream does not hold one value per valid step."""
    m = np.asarray(valid, dtype=bool)
    if len(streams) != m.shape[0]:
        raise ValueError(f"{name}: {len(streams)} streams for {m.shape[0]} rows")
    d = decode_varints(b"".join(streams))
    # values per stream: terminal bytes within each stream's byte range
    sizes = np.array([len(s) for s in streams], dtype=np.int64)
    is_end = (np.frombuffer(b"".join(streams), dtype=np.uint8) & 0x80) == 0
    counts = np.zeros(len(streams), dtype=np.int64)
    nonempty = sizes > 0
    if nonempty.any():
        counts[nonempty] = np.add.reduceat(is_end.astype(np.int64), (np.cumsum(sizes) - sizes)[nonempty])
    wrong = counts != m.sum(axis=1)
    if wrong.any():
        row = int(np.flatnonzero(wrong)[0])
        raise ValueError(f"{name}: row {row} codes {int(counts[row])} values for {int(m[row].sum())} valid steps")
    rows = np.nonzero(m)[0]
    flat = _undiff(d, _row_starts(rows), order).astype(np.float64) * step
    if angular:
        flat = (flat + math.pi) % (2 * math.pi) - math.pi
    out = np.zeros(m.shape, dtype=np.float32)
    out[m] = flat
    return out


def pack_bitmap(mask: np.ndarray, empty_when: bool) -> list[bytes]:
    """Rows of a bool mask [N, L] as LSB-first bitmaps; a row that is all `empty_when` becomes b""."""
    m = np.asarray(mask, dtype=bool)
    packed = np.packbits(m, axis=1, bitorder="little")
    trivial = (m == empty_when).all(axis=1)
    return [b"" if t else row.tobytes() for t, row in zip(trivial.tolist(), packed, strict=True)]


def unpack_bitmap(data: bytes, n_steps: int, empty_means: bool, name: str = "bitmap") -> np.ndarray:
    """One bitmap back to bool [n_steps]; b"" is all `empty_means`."""
    if not data:
        return np.full(n_steps, empty_means, dtype=bool)
    if len(data) != (n_steps + 7) // 8:
        raise ValueError(f"{name}: {len(data)} bytes for {n_steps} steps")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[:n_steps].astype(bool)


# --- tracks ---------------------------------------------------------------------------------------------

def encode_tracks(channels: Mapping[str, torch.Tensor | np.ndarray], valid: torch.Tensor | np.ndarray,
                  quant: Quantisation, order: int, first_step: int = 0,
                  filled: torch.Tensor | np.ndarray | None = None, name: str = "track") -> list[replay_pb2.Track]:
    """N rows of waypoints -> N `Track` messages. `channels` maps a subset of x, y, heading, speed to [N, L]
    arrays (m, m, rad, m/s); `valid` [N, L] bool; `filled` [N, L] bool (interpolated steps) or None;
    `first_step` is the scenario step of column 0."""
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise ValueError(f"{name}: unknown channels {unknown}; known {CHANNELS}")
    m = as_numpy(valid).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"{name}: valid must be [rows, steps], got shape {m.shape}")
    coded = {c: encode_channel(v, m, quant.step(c), order, angular=c == "heading", name=f"{name} {c}")
             for c, v in channels.items()}
    valid_bits = pack_bitmap(m, empty_when=True)
    filled_bits = pack_bitmap(as_numpy(filled).astype(bool) & m, empty_when=False) if filled is not None \
        else [b""] * m.shape[0]
    return [replay_pb2.Track(first_step=first_step, n_steps=m.shape[1], valid=valid_bits[i], filled=filled_bits[i],
                             **{c: coded[c][i] for c in coded})
            for i in range(m.shape[0])]


@dataclass
class DecodedTracks:
    """Decoded rows: `channels` maps each requested channel to float32 [N, L]; `valid`, `filled` bool [N, L];
    `first_step` int64 [N]."""

    channels: dict[str, np.ndarray]
    valid: np.ndarray
    filled: np.ndarray
    first_step: np.ndarray


def decode_tracks(tracks: Sequence[replay_pb2.Track], channels: Sequence[str], quant: Quantisation, order: int,
                  n_steps: int | None = None, name: str = "track") -> DecodedTracks:
    """`Track` messages (all spanning the same number of steps, `n_steps` when given) -> arrays."""
    lengths = {t.n_steps for t in tracks}
    if n_steps is not None:
        lengths.add(n_steps)
    if len(lengths) > 1:
        raise ValueError(f"{name}: tracks span different numbers of steps {sorted(lengths)}")
    steps = lengths.pop() if lengths else 0
    valid = np.stack([unpack_bitmap(t.valid, steps, True, f"{name} {i} valid") for i, t in enumerate(tracks)]) \
        if tracks else np.zeros((0, steps), dtype=bool)
    filled = np.stack([unpack_bitmap(t.filled, steps, False, f"{name} {i} filled") for i, t in enumerate(tracks)]) \
        if tracks else np.zeros((0, steps), dtype=bool)
    out = {c: decode_channel([getattr(t, c) for t in tracks], valid, quant.step(c), order, angular=c == "heading",
                             name=f"{name} {c}") for c in channels}
    return DecodedTracks(out, valid, filled & valid, np.array([t.first_step for t in tracks], dtype=np.int64))

"""Fixed-point delta codec: varints agree with protobuf's sint64, tracks round-trip within step / 2 on random
and adversarial inputs (gaps, NaN at invalid steps, large jumps, heading across ±π), bad input is refused."""

import math

import numpy as np
import pytest
import torch
from fleetloop.replay.codec import (
    Quantisation,
    decode_channel,
    decode_tracks,
    decode_varints,
    encode_channel,
    encode_tracks,
    encode_varints,
)
from fleetloop.replay.config import load_config
from google.protobuf.internal import encoder, wire_format

QUANT = Quantisation.from_config(load_config().section("codec"))


def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + math.pi) % (2 * math.pi) - math.pi)


def bound(step: float, values: np.ndarray) -> np.ndarray:
    """The codec's stated bound: step / 2 plus float32 rounding of the decoded value."""
    return step / 2 + np.abs(values) * 2.0 ** -24 + 1e-9


def test_varints_are_protobuf_sint64() -> None:
    values = np.array([0, 1, -1, 63, -64, 64, 8191, -8192, 2 ** 40, -2 ** 62, 2 ** 62 - 1, 2 ** 63 - 1, -2 ** 63],
                      dtype=np.int64)
    data, lengths = encode_varints(values)
    reference = [encoder._VarintBytes(wire_format.ZigZagEncode(int(v))) for v in values]
    assert data == b"".join(reference)
    assert lengths.tolist() == [len(r) for r in reference]
    assert decode_varints(data).tolist() == values.tolist()


def test_truncated_varint_is_refused() -> None:
    data, _ = encode_varints(np.array([300], dtype=np.int64))
    with pytest.raises(ValueError, match="truncated"):
        decode_varints(data[:1])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_random_tracks_round_trip_within_half_a_step(seed: int, order: int) -> None:
    rng = np.random.default_rng(seed)
    n, length = 17, 150
    x = rng.normal(0, 3, (n, length)).cumsum(axis=1) + rng.normal(0, 200, (n, 1))
    y = rng.normal(0, 1, (n, length)).cumsum(axis=1)
    heading = rng.uniform(-4, 4, (n, length))               # also outside [-π, π): decoded wrapped
    speed = rng.normal(5, 10, (n, length))
    valid = rng.random((n, length)) > 0.3
    valid[3] = False                                         # a slot with no valid step
    valid[4] = True
    filled = rng.random((n, length)) > 0.5
    for arr in (x, y, heading, speed):
        arr[~valid] = np.nan                                 # invalid steps may hold anything
    tracks = encode_tracks({"x": x, "y": y, "heading": heading, "speed": speed}, valid, QUANT, order, first_step=2,
                           filled=filled)
    back = decode_tracks(tracks, ["x", "y", "heading", "speed"], QUANT, order)
    assert (back.valid == valid).all()
    assert (back.filled == (filled & valid)).all()
    assert (back.first_step == 2).all()
    for c, arr in (("x", x), ("y", y), ("speed", speed)):
        err = np.abs(back.channels[c] - arr)[valid]
        assert (err <= bound(QUANT.step(c), arr[valid])).all(), c
        assert (back.channels[c][~valid] == 0).all()
    h = back.channels["heading"]
    assert (angle_error(h, heading)[valid] <= bound(QUANT.step("heading"), heading[valid])).all()
    assert ((h[valid] >= -math.pi - 1e-6) & (h[valid] <= math.pi + 1e-6)).all()   # [-π, π) up to float32 rounding
    assert tracks[3].x == b"" and tracks[4].valid == b""       # nothing coded / all valid costs no bitmap


def test_heading_wraps_across_pi_in_small_steps() -> None:
    # a left turn spinning through +π to -π at 0.05 rad/step: three full turns
    heading = ((np.arange(400) * 0.05 + math.pi) % (2 * math.pi) - math.pi)[None]
    valid = np.ones_like(heading, dtype=bool)
    streams = encode_channel(heading, valid, QUANT.step("heading"), order=2, angular=True)
    assert len(streams[0]) == 400                            # one byte each: no 2π jump is ever coded
    back = decode_channel(streams, valid, QUANT.step("heading"), order=2, angular=True)
    assert angle_error(back, heading).max() <= QUANT.step("heading") / 2 + 1e-6


def test_large_jumps_and_extremes_survive() -> None:
    x = np.array([[0.0, 1e6, -1e6, 0.004, 5e7, -5e7, 0.0]])
    valid = np.ones_like(x, dtype=bool)
    back = decode_channel(encode_channel(x, valid, 0.01, order=2), valid, 0.01, order=2)
    assert np.allclose(back, x.astype(np.float32), rtol=0, atol=0.005 + 5e7 * 2.0 ** -24)


def test_errors_do_not_accumulate_along_a_long_track() -> None:
    # 10,000 steps of 0.0049 m each: a coder of rounded differences would drift by 49 m
    x = (np.arange(10_000) * 0.0049)[None]
    valid = np.ones_like(x, dtype=bool)
    back = decode_channel(encode_channel(x, valid, 0.01, order=1), valid, 0.01, order=1)
    assert np.abs(back - x).max() <= 0.005 + 50 * 2.0 ** -24


def test_constant_velocity_codes_in_about_one_byte_per_value() -> None:
    t = np.arange(150) * 0.1
    x = (10.0 + 13.9 * t)[None]
    valid = np.ones_like(x, dtype=bool)
    second = encode_channel(x, valid, 0.01, order=2)[0]
    first = encode_channel(x, valid, 0.01, order=1)[0]
    assert len(second) <= 150 + 2 and len(first) >= 2 * 149     # 139 quanta per step needs 2 bytes as 1st order


def test_torch_input_on_any_device() -> None:
    x = torch.linspace(-5, 5, 20, dtype=torch.float32).reshape(2, 10)
    valid = torch.ones(2, 10, dtype=torch.bool)
    tracks = encode_tracks({"x": x, "y": x}, valid, QUANT, 2)
    back = decode_tracks(tracks, ["x", "y"], QUANT, 2)
    assert np.abs(back.channels["x"] - x.numpy()).max() <= 0.005 + 1e-6


def test_nan_at_a_valid_step_is_refused() -> None:
    x = np.zeros((3, 5))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1, step 2"):
        encode_channel(x, np.ones((3, 5), dtype=bool), 0.01, order=2, name="agent x")


def test_infinite_and_out_of_range_values_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode_channel(np.array([[0.0, np.inf]]), np.ones((1, 2), dtype=bool), 0.01, order=1)
    with pytest.raises(ValueError, match="beyond the codec's range"):
        encode_channel(np.array([[0.0, 1e14]]), np.ones((1, 2), dtype=bool), 0.01, order=1)


def test_mismatched_shapes_and_streams_are_refused() -> None:
    with pytest.raises(ValueError, match="same"):
        encode_channel(np.zeros((2, 5)), np.ones((2, 4), dtype=bool), 0.01, order=1)
    valid = np.ones((2, 5), dtype=bool)
    streams = encode_channel(np.zeros((2, 5)), valid, 0.01, order=1)
    fewer = valid.copy()
    fewer[1, 4] = False
    with pytest.raises(ValueError, match="row 1 codes 5 values for 4 valid steps"):
        decode_channel(streams, fewer, 0.01, order=1)
    tracks = encode_tracks({"x": np.zeros((1, 5))}, np.ones((1, 5), dtype=bool), QUANT, 1)
    tracks += encode_tracks({"x": np.zeros((1, 6))}, np.ones((1, 6), dtype=bool), QUANT, 1)
    with pytest.raises(ValueError, match="different numbers of steps"):
        decode_tracks(tracks, ["x"], QUANT, 1)


def test_unknown_channel_and_bad_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown channels"):
        encode_tracks({"z": np.zeros((1, 2))}, np.ones((1, 2), dtype=bool), QUANT, 1)
    with pytest.raises(ValueError, match="positive"):
        Quantisation(0.0, 0.001, 0.01).check()

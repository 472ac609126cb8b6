"""The kinematic bicycle and its inverse: known answers, the speed floor, log → actions → log round trips
(tolerances stated per test), and clamping that shows up as invalid steps and a measured error."""

import pytest
import torch
from fleetloop.replay.config import load_config
from fleetloop.replay.dynamics import BicycleBounds, bicycle_step, clamp_actions, inverse_bicycle, wrap_angle

DT = 0.1


@pytest.fixture(scope="module")
def bounds() -> BicycleBounds:
    return BicycleBounds.from_config(load_config().section("dynamics"))


def roll(x0, y0, h0, v0, accel, curvature, min_speed=0.0):
    """States [..., T] from an initial state and actions [..., T] (the last action unused)."""
    xs, ys, hs, vs = [x0], [y0], [h0], [v0]
    for k in range(accel.shape[-1] - 1):
        x, y, h, v, _ = bicycle_step(xs[-1], ys[-1], hs[-1], vs[-1], accel[..., k], curvature[..., k], DT, min_speed)
        xs.append(x)
        ys.append(y)
        hs.append(h)
        vs.append(v)
    return torch.stack(xs, -1), torch.stack(ys, -1), torch.stack(hs, -1), torch.stack(vs, -1)


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_straight_step_with_acceleration():
    x, y, h, v, applied = bicycle_step(t(0.0), t(0.0), t(0.0), t(10.0), t(2.0), t(0.0), DT)
    assert v.item() == pytest.approx(10.2)
    assert x.item() == pytest.approx(1.01)          # 0.1 s × mean speed 10.1 m/s
    assert y.item() == 0.0 and h.item() == 0.0 and applied.item() == pytest.approx(2.0)


def test_constant_curvature_stays_on_the_circle():
    """10 m/s on κ = 0.1 (R = 10 m) for 3 s: heading advances v·κ·t, the position stays on the circle
    within 0.01 m (the chord rule shortens each 1 m step by ds·Δθ²/24)."""
    n = 31
    x, y, h, v = roll(t(0.0), t(0.0), t(0.0), t(10.0), torch.zeros(n), torch.full((n,), 0.1))
    assert wrap_angle(h[..., -1] - 3.0).abs().item() < 1e-4
    radius = torch.hypot(x, y - 10.0)
    assert (radius - 10.0).abs().max().item() < 0.01


def test_speed_floor_stops_without_reversing():
    x, _, _, v, applied = bicycle_step(t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), t(1.0, 0.2), t(-6.0, -6.0),
                                       t(0.0, 0.0), DT)
    assert v.tolist() == pytest.approx([0.4, 0.0])
    assert applied.tolist() == pytest.approx([-6.0, -2.0])   # the floor cut the second brake to -2 m/s²
    assert x.tolist() == pytest.approx([0.07, 0.01])
    _, _, _, v, _ = bicycle_step(t(0.0), t(0.0), t(0.0), t(0.2), t(-6.0), t(0.0), DT, min_speed_mps=-3.0)
    assert v.item() == pytest.approx(-0.4)                   # reversing when configured


def test_clamp_actions(bounds):
    a, k = clamp_actions(t(-9.0, 3.0, 7.0), t(0.5, -0.1, -0.4), bounds)
    assert a.tolist() == [-6.0, 3.0, 6.0]
    assert k.tolist() == pytest.approx([0.3, -0.1, -0.3])


def test_inverse_of_model_generated_log_reproduces_it(bounds):
    """A log made by the model itself (random in-bounds actions, 64 trajectories × 81 steps): the inverse
    returns those actions (within 1e-3) and rolling them reproduces the positions within 1 cm after 8 s
    (float32 accumulation)."""
    g = torch.Generator().manual_seed(3)
    n, steps = 64, 81
    accel = (torch.rand(n, steps, generator=g) * 6 - 3.0)
    curv = (torch.rand(n, steps, generator=g) * 0.1 - 0.05)
    h0, v0 = torch.rand(n, generator=g) * 6, 8 + 10 * torch.rand(n, generator=g)
    x, y, h, v = roll(torch.zeros(n), torch.zeros(n), h0, v0, accel, curv, min_speed=-100.0)
    a_inv, k_inv, ok = inverse_bicycle(x, y, h, v, torch.ones(n, steps, dtype=torch.bool), DT, bounds)
    assert bool(ok[:, :-1].all()) and not bool(ok[:, -1].any())
    assert (a_inv[:, :-1] - accel[:, :-1]).abs().max().item() < 1e-3
    assert (k_inv[:, :-1] - curv[:, :-1]).abs().max().item() < 1e-3
    rx, ry, _, _ = roll(x[:, 0], y[:, 0], h[:, 0], v[:, 0], a_inv, k_inv)
    assert torch.hypot(rx - x, ry - y).max().item() < 0.01


def test_inverse_of_a_smooth_analytic_log(bounds):
    """An arc driven with constant acceleration, sampled exactly at 10 Hz (not made by the model): the
    actions reproduce the positions within 5 cm over 8 s."""
    time = torch.arange(81, dtype=torch.float64) * DT
    speed = 5.0 + 1.0 * time                   # 5 → 13 m/s
    s = 5.0 * time + 0.5 * time ** 2
    heading = s / 60.0                         # κ = 1/60
    x, y = 60.0 * torch.sin(heading), 60.0 * (1 - torch.cos(heading))
    f = [v.float() for v in (x, y, heading, speed)]
    a, k, ok = inverse_bicycle(*f, torch.ones(81, dtype=torch.bool), DT, bounds)
    assert bool(ok[:-1].all())
    assert a[:-1].mean().item() == pytest.approx(1.0, abs=1e-3)
    assert k[:-1].mean().item() == pytest.approx(1 / 60, abs=1e-4)
    rx, ry, _, _ = roll(f[0][0], f[1][0], f[2][0], f[3][0], a, k)
    assert torch.hypot(rx - f[0], ry - f[1]).max().item() < 0.05


def test_clamped_step_is_invalid_and_its_error_measured(bounds):
    """A log braking at 9 m/s² for 1 s: those steps come back clamped to −6 and invalid; rolling the clamped
    actions misses the log by the measured stopping-distance difference."""
    speed = torch.cat([torch.full((10,), 20.0), 20.0 - 9.0 * DT * torch.arange(1, 11), torch.full((10,), 11.0)])
    s = torch.cat([torch.zeros(1), torch.cumsum((speed[:-1] + speed[1:]) * 0.5 * DT, 0)])
    zeros, valid = torch.zeros(30), torch.ones(30, dtype=torch.bool)
    a, k, ok = inverse_bicycle(s, zeros, zeros, speed, valid, DT, bounds)
    braking = slice(9, 19)
    assert a[braking].tolist() == pytest.approx([-6.0] * 10)
    assert not bool(ok[braking].any()) and bool(ok[:9].all()) and bool(ok[20:29].all())
    rx, _, _, rv = roll(s[0], zeros[0], zeros[0], speed[0], a, k)
    # 9 m/s² for 1 s loses 9 m/s; 6 m/s² loses 6: 3 m/s faster afterwards, 1.5 m further after the brake
    assert (rv[19] - speed[19]).item() == pytest.approx(3.0, abs=1e-3)
    assert (rx[19] - s[19]).item() == pytest.approx(1.5, abs=0.01)
    unbounded, _, free_ok = inverse_bicycle(s, zeros, zeros, speed, valid, DT)
    assert unbounded[braking].tolist() == pytest.approx([-9.0] * 10, abs=1e-3) and bool(free_ok[:-1].all())


def test_speed_disagreeing_with_positions_is_flagged(bounds):
    """Positions of 10 m/s but a speed channel reading 20 m/s: each step lands 1 m off, beyond the 0.5 m
    residual bound."""
    x = torch.arange(20, dtype=torch.float32)
    zeros = torch.zeros(20)
    _, _, ok = inverse_bicycle(x, zeros, zeros, torch.full((20,), 20.0), torch.ones(20, dtype=torch.bool), DT, bounds)
    assert not bool(ok.any())


def test_invalid_states_give_zero_invalid_actions(bounds):
    speed = torch.tensor([10.0, 10.2, 0.0, 10.6, 10.8])
    x = torch.cumsum(speed * DT, 0)
    valid = torch.tensor([True, True, False, True, True])
    a, _, ok = inverse_bicycle(x, torch.zeros(5), torch.zeros(5), speed, valid, DT, bounds)
    assert ok.tolist() == [True, False, False, True, False]
    assert a.tolist() == pytest.approx([2.0, 0.0, 0.0, 2.0, 0.0])


def test_missing_config_key_is_named():
    with pytest.raises(KeyError, match="dynamics.curvature_max_inv_m"):
        BicycleBounds.from_config({"accel_max_mps2": 6.0, "decel_max_mps2": 6.0})

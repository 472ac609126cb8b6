"""Vehicle motion, vectorised over the fleet: ten 10 Hz steps of jerk-limited speed control a second,
lateral motion (lane changes, weaving), the world pose of every sample, energy and temperature.

Speed control follows the binding constraint ahead (a speed-limit change, a stop line, a red light,
a hold) on a braking curve; an incident may override the acceleration (`FleetState.override_*`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fleetloop.sim.state import INF, FleetState
from fleetloop.sim.world import CurveBank, latlon

SAMPLES = 10  # 10 Hz steps per second


class Kinematics:
    """Moves `state` one second at a time; draws from `rng` (lane changes, temperature noise)."""

    def __init__(self, state: FleetState, params: dict, rng: np.random.Generator, bank: CurveBank) -> None:
        self.state, self.p, self.rng, self.bank = state, params, rng, bank
        self.dt = float(params["kinematics"]["dt_s"])

    # ------------------------------------------------------------------ longitudinal

    def _binding_constraint(self, t_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Per vehicle, the stop line / hold / speed-limit change that restricts it most now (1 Hz,
        a driver's reaction time): (route position m, speed there m/s). Lights are judged here too:
        a light turning red with less room than the dilemma decel needs is driven through."""
        st = self.state
        kin = self.p["kinematics"]
        ts = t_ms / 1000.0
        v, s = st.speed_mps, st.pos_m
        red = ((ts + st.signal_offset_s) % st.signal_cycle_s) >= st.signal_cycle_s / 2
        st.through_light |= red & (v > 1.5) & (st.signal_pos_m - s < v * v / (2.0 * kin["dilemma_decel_mps2"]))
        stop = np.minimum(np.where(red & ~st.through_light, st.signal_pos_m, INF), st.hold_pos_m)
        pos = np.concatenate([st.upcoming_pos_m, stop[:, None]], axis=1)
        cv = np.concatenate([st.upcoming_limit_mps * kin["cruise_factor"], np.zeros((st.n, 1))], axis=1)
        dp = np.maximum(pos - s[:, None], 0.0)
        va = np.minimum(np.sqrt(cv * cv + 2.0 * kin["plan_decel_mps2"] * dp), cv + kin["final_approach_gain"] * dp)
        j = np.argmin(va, axis=1)
        rows = np.arange(st.n)
        return pos[rows, j], cv[rows, j]

    def substeps(self, t_ms: int, load_piece: Callable[[int, int, dict], None],
                 override_step: Callable[[int, int], None]) -> dict[str, np.ndarray]:
        """Ten 10 Hz steps of jerk-limited speed control; returns (n, 10) records of every sample.

        `load_piece(i, k, samples)` is called when vehicle i moves onto its next piece after step k;
        `override_step(i, t_ms)` after every step for each vehicle whose acceleration is overridden.
        """
        st = self.state
        n = st.n
        kin = self.p["kinematics"]
        f64 = np.float64
        # numpy scalars and full arrays: ufuncs on 50-element arrays cost ~1 us; Python floats double it
        dt, half_dt = f64(self.dt), f64(self.dt / 2)
        b, b2, k2, gain = (f64(x) for x in (kin["plan_decel_mps2"], 2 * kin["plan_decel_mps2"],
                                             kin["final_approach_gain"], kin["speed_gain"]))
        jdt, snap = f64(kin["jerk_max_mps3"] * self.dt), f64(kin["stop_snap_mps"])
        zero, tenth, low = np.zeros(n), f64(0.1), f64(-kin["comfort_decel_mps2"])
        bpos, bcv = self._binding_constraint(t_ms)
        bcv2 = bcv * bcv
        st.cruise_mps = np.minimum(st.speed_limit_mps * kin["cruise_factor"], st.speed_cap_mps)
        rec = {name: np.repeat(arr[:, None], SAMPLES, axis=1) for name, arr in (
            ("x0", st.piece_x0_m), ("y0", st.piece_y0_m), ("h0", st.piece_heading_rad), ("L", st.piece_length_m),
            ("ang", st.piece_turn_rad), ("tab", st.piece_table), ("s0", st.piece_start_m))}
        rs, rv, ra = np.empty((n, SAMPLES)), np.empty((n, SAMPLES)), np.empty((n, SAMPLES))
        any_ovr = bool(st.override_on.any())
        a_max = st.accel_max_mps2
        s, v, a_prev = st.pos_m, st.speed_mps, st.accel_mps2
        for k in range(SAMPLES):
            rs[:, k] = s
            rv[:, k] = v
            dp = np.maximum(bpos - s, zero)
            va_sq = np.sqrt(bcv2 + b2 * dp)
            va_lin = bcv + k2 * dp
            use_sq = va_sq < va_lin
            va = np.where(use_sq, va_sq, va_lin)
            slope = np.where(use_sq, b / np.maximum(va_sq, tenth), k2)
            a_des = np.minimum(gain * (st.cruise_mps - v), gain * (va - v) - v * slope)
            if any_ovr:
                ovr = st.override_on
                a_des = np.where(ovr, st.override_accel_mps2, a_des)
                j = np.where(ovr, st.override_jerk_mps3 * dt, jdt)
                a = np.minimum(np.maximum(a_des, a_prev - j), a_prev + j)
                a = np.where(ovr, np.minimum(a, a_max), np.minimum(np.maximum(a, low), a_max))
            else:
                a = np.minimum(np.maximum(a_des, a_prev - jdt), a_prev + jdt)
                a = np.minimum(np.maximum(a, low), a_max)
            v_new = v + a * dt
            stopped = (v_new <= snap) & ((a < zero) | (va < tenth))
            v_new = np.where(stopped, zero, np.maximum(v_new, zero))
            ra[:, k] = a
            a_prev = a  # kept through a stop: the brake releases within the jerk limit before moving off
            s = s + half_dt * (v + v_new)
            v = v_new
            moved_on = (s >= st.piece_end_m).nonzero()[0]
            if len(moved_on) or any_ovr:
                st.pos_m, st.speed_mps, st.accel_mps2 = s, v, a_prev
                for i in moved_on.tolist():
                    load_piece(i, k + 1, rec)
                if any_ovr:
                    for i in st.override_on.nonzero()[0].tolist():
                        override_step(i, t_ms + 100 * (k + 1))
        st.pos_m, st.speed_mps, st.accel_mps2 = s, v, a_prev
        ra[rv == 0.0] = np.maximum(ra[rv == 0.0], 0.0)  # standing still: no braking reads
        st.odometer_m += st.pos_m - rs[:, 0]
        rec["srel"] = rs - rec["s0"]
        rec["v"], rec["a"] = rv, ra
        rec["d"], rec["psi"], rec["yaw_x"] = self._lateral(t_ms, rs, rv)
        return rec

    # ------------------------------------------------------------------ lateral

    def _lateral(self, t_ms: int, rs: np.ndarray, rv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lateral offset (m, + left), heading offset (rad) and extra yaw rate (rad/s) of every sample:
        lane changes are S-curves over distance; weaving is alternating yaw lobes over time, the
        first and last at half amplitude so the heading swings around the lane and ends aligned."""
        st = self.state
        u = np.clip((rs - st.lane_change_start_m[:, None]) / st.lane_change_length_m[:, None], 0.0, 1.0)
        two_pi_u = 2 * np.pi * u
        delta, length = st.lane_change_shift_m[:, None], st.lane_change_length_m[:, None]
        slope = delta / length * (1 - np.cos(two_pi_u))
        d = st.lane_change_from_m[:, None] + delta * (u - np.sin(two_pi_u) / (2 * np.pi))
        curv = delta / length**2 * 2 * np.pi * np.sin(two_pi_u)
        yaw = np.where(st.lane_change_on[:, None], rv * curv / (1 + slope**2), 0.0)
        psi = np.arctan(slope)
        if st.weave_on.any():
            tau = (t_ms / 1000.0 + 0.1 * np.arange(SAMPLES))[None, :] - st.weave_start_s[:, None]
            half = st.weave_period_s[:, None] / 2
            lobe = np.floor(tau / half)
            lobes = st.weave_lobes[:, None]
            amp = np.where((lobe == 0) | (lobe == lobes - 1), 0.5, 1.0) * st.weave_amp_rps[:, None]
            live = st.weave_on[:, None] & (tau >= 0) & (lobe < lobes)
            yaw_w = np.where(live, amp * np.sin(2 * np.pi * tau / st.weave_period_s[:, None]), 0.0)
            psi_w = st.weave_heading_rad[:, None] + self.dt * (np.cumsum(yaw_w, axis=1) - yaw_w)
            lat_rate = rv * np.sin(psi_w)
            d_w = st.weave_offset_m[:, None] + self.dt * (np.cumsum(lat_rate, axis=1) - lat_rate)
            st.weave_heading_rad = np.where(st.weave_on, psi_w[:, -1] + self.dt * yaw_w[:, -1], 0.0)
            st.weave_offset_m = d_w[:, -1] + self.dt * lat_rate[:, -1]
            return d + d_w, psi + psi_w, yaw + yaw_w
        if st.recentring:
            # after a weave the lane keeper re-centres slowly (a few cm per second, no visible yaw)
            st.weave_offset_m *= 0.95
            st.recentring = bool(np.abs(st.weave_offset_m).max() > 0.01)
            if not st.recentring:
                st.weave_offset_m[:] = 0.0
        return d + st.weave_offset_m[:, None], psi, yaw

    def lane_change_decisions(self, t_ms: int) -> None:
        """End finished lane changes; start overtakes (to the left) and returns to the home lane (1 Hz)."""
        st = self.state
        lc = self.p["lane_change"]
        ts = t_ms / 1000.0
        st.lane_change_on &= (st.pos_m - st.lane_change_start_m) < st.lane_change_length_m
        room = st.straight_ahead_m()
        length = np.sqrt(2 * np.pi * lc["lateral_m"] * st.speed_limit_mps / lc["max_yaw_rate_rps"])
        free = ~st.lane_change_on & ~st.weave_on & (st.speed_mps >= lc["min_speed_mps"]) \
            & (st.piece_turn_rad == 0.0) & ~st.override_on
        in_left = st.lane_index > 0
        go_back = free & in_left & ((st.lane_return_ms <= t_ms) | (room < length + 60.0)) & (room > length + 5)
        draw = self.rng.random(st.n)
        go_left = free & ~in_left & (st.lane_count > 1) & (room > 2 * length + 10 * st.speed_mps + 120) \
            & (draw < lc["prob_per_s"])
        start = go_back | go_left
        if start.any():
            d_now = st.lane_change_from_m + st.lane_change_shift_m
            st.lane_change_from_m = np.where(start, d_now, st.lane_change_from_m)
            st.lane_change_shift_m = np.where(go_left, lc["lateral_m"],
                                              np.where(go_back, -lc["lateral_m"], st.lane_change_shift_m))
            st.lane_change_start_m = np.where(start, st.pos_m, st.lane_change_start_m)
            st.lane_change_length_m = np.where(start, length, st.lane_change_length_m)
            st.lane_change_on |= start
            st.lane_index = st.lane_index + go_left - go_back
            back_after = ts + self.rng.uniform(*lc["return_after_s"], st.n) + length / np.maximum(st.speed_mps, 1)
            st.lane_return_ms = np.where(go_left, back_after * 1000.0, np.where(go_back, INF, st.lane_return_ms))

    # ------------------------------------------------------------------ pose, energy

    def geometry(self, rec: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """World pose of every sample from piece tables, lateral offsets and speeds: (n, 10) arrays of
        x, y (m), lat, lon (deg), heading (rad), yaw (rad/s), steer (rad), v (m/s), a, alat (m/s^2),
        throttle and brake (0..1)."""
        st = self.state
        L = rec["L"]
        points = self.bank.tables.shape[1]
        u = np.clip(rec["srel"] / L, 0.0, 1.0)
        f = u * (points - 1)
        i0 = np.minimum(f.astype(np.int64), points - 2)
        w = f - i0
        flat = self.bank.tables.reshape(-1, 2)
        base = rec["tab"] * points + i0
        p0, p1 = flat[base], flat[base + 1]
        lx = (p0[..., 0] + (p1[..., 0] - p0[..., 0]) * w) * L
        ly = (p0[..., 1] + (p1[..., 1] - p0[..., 1]) * w) * L
        h0 = rec["h0"]
        c, s = np.cos(h0), np.sin(h0)
        ang = rec["ang"]
        heading = h0 + ang * (u - np.sin(2 * np.pi * u) / (2 * np.pi))
        kappa = ang / L * (1 - np.cos(2 * np.pi * u))
        d = rec["d"]
        x = rec["x0"] + c * lx - s * ly - np.sin(heading) * d
        y = rec["y0"] + s * lx + c * ly + np.cos(heading) * d
        v = rec["v"]
        yaw = v * kappa + rec["yaw_x"]
        steer = np.arctan(st.wheelbase_m[:, None] * (kappa + rec["yaw_x"] / np.maximum(v, 1.0)))
        heading = np.mod(heading + rec["psi"] + np.pi, 2 * np.pi) - np.pi
        lat, lon = latlon(x, y, st.origin_lat_deg[:, None], st.origin_lon_deg[:, None])
        a = rec["a"]
        return {"x": x, "y": y, "lat": lat, "lon": lon, "heading": heading, "yaw": yaw, "steer": steer,
                "v": v, "a": a, "alat": v * yaw,
                "throttle": np.clip((a + 0.15) / st.accel_max_mps2[:, None], 0.0, 1.0) * (v > 0),
                "brake": np.clip(-a / 8.0, 0.0, 1.0)}

    def energy_and_temperature(self, geo: dict[str, np.ndarray]) -> None:
        """State of charge after this second's distance (and charging); compute temperature drifts
        toward a speed-dependent target with noise."""
        st = self.state
        en = self.p["energy"]
        dist = geo["v"].sum(axis=1) * self.dt
        st.state_of_charge = np.clip(st.state_of_charge - dist * st.soc_use_per_m - 2e-6
                                     + np.where(st.charging, en["charge_per_s"], 0.0), 0.0, 1.0)
        target = 48.0 + 12.0 * geo["v"][:, 0] / 25.0 - 6.0 * st.parked
        st.compute_temp_c += 0.02 * (target - st.compute_temp_c) + self.rng.normal(0, 0.05, st.n)

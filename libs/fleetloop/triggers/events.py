"""Triggers over discrete vehicle events: contact, takeover, call_for_help, error_code, operator_speech.

Events are rare (a handful per vehicle-hour), so these walk the matching events one by one. Mode
changes alone fire nothing: they are labels (INCIDENTS rules); TAKEOVER and CALL_FOR_HELP do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from fleetloop.config import ConfigModel
from fleetloop.triggers.base import Category, Detection, Trigger, ms, register
from fleetloop.triggers.config import Count, Fraction, NonNegative, Positive, TriggerConfig, TriggerSpec
from fleetloop.triggers.frames import Frames
from fleetloop.v1 import common_pb2


class CooldownParams(ConfigModel):
    """Repeats of one act within `cooldown_s` (s) fire once."""

    cooldown_s: NonNegative


class ContactParams(CooldownParams):
    """Impact speed (m/s) at which a contact's severity reaches 1."""

    severe_impact_mps: Positive


class FixedSeverityParams(CooldownParams):
    """A fixed severity (0..1) ranks the event among its metric."""

    severity: Fraction


class OperatorSpeechParams(ConfigModel):
    """Safety keywords (case-insensitive substrings) and the severity (0..1) of a hit."""

    severity: Fraction
    keywords: tuple[Annotated[str, Field(min_length=1)], ...] = Field(min_length=1)


class ErrorCodeParams(ConfigModel):
    """A burst: ≥ `min_count` codes within `window_s` (s), at `severity` (0..1)."""

    min_count: Count
    window_s: Positive
    severity: Fraction


class _EventTrigger(Trigger):
    """One detection per event of `KIND`, at most one per `cooldown_s` (repeats of one act)."""

    KIND: int
    p: CooldownParams

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.last_fired_ms = -(1 << 62)

    def update(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        out = []
        for i in np.flatnonzero(frames.ev_kind == self.KIND):
            t = int(frames.ev_t_ms[i])
            if t - self.last_fired_ms > ms(self.p.cooldown_s):
                self.last_fired_ms = t
                out.append(self.fire(frames, int(i), t))
        return out

    def fire(self, frames: Frames, i: int, t_ms: int) -> Detection:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        return {"last": self.last_fired_ms}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.last_fired_ms = state["last"]


@register
class Contact(_EventTrigger):
    """A CONTACT event (bumper/contact sensor or collision flag); `value` = impact speed (m/s). MPD."""

    name = "contact"
    category = Category.MPD
    Params = ContactParams
    p: ContactParams
    KIND = common_pb2.EVENT_KIND_CONTACT

    def fire(self, frames: Frames, i: int, t_ms: int) -> Detection:
        impact = max(float(frames.ev_value[i]), 0.0)
        return self.detection(0.5 + 0.5 * impact / self.p.severe_impact_mps, t_ms, t_ms, t_ms,
                              {"impact_mps": impact}, frames.ev_source[i])


@register
class Takeover(_EventTrigger):
    """A TAKEOVER event: a human disengaged autonomy; `value` = steering torque (N·m). MPI."""

    name = "takeover"
    category = Category.MPI
    Params = FixedSeverityParams
    p: FixedSeverityParams
    KIND = common_pb2.EVENT_KIND_TAKEOVER

    def fire(self, frames: Frames, i: int, t_ms: int) -> Detection:
        return self.detection(self.p.severity, t_ms, t_ms, t_ms,
                              {"torque_nm": float(frames.ev_value[i]), "to_mode": float(frames.ev_to_mode[i])},
                              frames.ev_source[i])


@register
class CallForHelp(_EventTrigger):
    """A CALL_FOR_HELP event: the vehicle asks for a remote driver or a guard. MPI."""

    name = "call_for_help"
    category = Category.MPI
    Params = FixedSeverityParams
    p: FixedSeverityParams
    KIND = common_pb2.EVENT_KIND_CALL_FOR_HELP

    def fire(self, frames: Frames, i: int, t_ms: int) -> Detection:
        return self.detection(self.p.severity, t_ms, t_ms, t_ms, {}, frames.ev_text[i] or frames.ev_source[i])


@register
class OperatorSpeech(Trigger):
    """An OPERATOR_SPEECH transcript containing a safety keyword (case-insensitive substring). INFO."""

    name = "operator_speech"
    category = Category.INFO
    Params = OperatorSpeechParams
    p: OperatorSpeechParams

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.keywords = [k.lower() for k in self.p.keywords]

    def update(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        out = []
        for i in np.flatnonzero(frames.ev_kind == common_pb2.EVENT_KIND_OPERATOR_SPEECH):
            text = frames.ev_text[i].lower()
            hits = [k for k in self.keywords if k in text]
            if hits:
                t = int(frames.ev_t_ms[i])
                out.append(self.detection(self.p.severity, t, t, t, {"keywords": len(hits)},
                                          f"{','.join(hits)}: {frames.ev_text[i]}"))
        return out


@register
class ErrorCode(Trigger):
    """A burst of one module/code: ≥ `min_count` ERROR_CODE events within `window_s`.

    Fires once per burst, at the event completing it, with the burst's first event as onset; the
    burst lasts until the code is quiet for `window_s`. Category INFO unless configured otherwise.
    """

    name = "error_code"
    category = Category.INFO
    Params = ErrorCodeParams
    p: ErrorCodeParams

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.bursts: dict[str, dict[str, Any]] = {}  # "module/code" → recent times, fired

    def update(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        window_ms, need = ms(self.p.window_s), self.p.min_count
        out = []
        for i in np.flatnonzero(frames.ev_kind == common_pb2.EVENT_KIND_ERROR_CODE):
            t, key = int(frames.ev_t_ms[i]), f"{frames.ev_module[i]}/{frames.ev_code[i]}"
            burst = self.bursts.get(key)
            if burst is None or t - burst["times"][-1] > window_ms:
                burst = self.bursts[key] = {"times": [], "fired": False}
            burst["times"] = (burst["times"] + [t])[-need:]
            times = burst["times"]
            if not burst["fired"] and len(times) == need and times[-1] - times[0] <= window_ms:
                burst["fired"] = True
                out.append(self.detection(self.p.severity, times[0], t, t, {"count": need}, key))
        # Forget codes that have been quiet for a whole window: state stays small.
        self.bursts = {k: b for k, b in self.bursts.items() if horizon_ms - b["times"][-1] <= window_ms}
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"bursts": self.bursts}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.bursts = {k: {"times": list(b["times"]), "fired": b["fired"]} for k, b in state["bursts"].items()}

"""Ego policies as torch modules, and their registry by `name@version`.

A `Policy` maps a `WorldState` (`[S, C, A]` agent states at step `state.k`) to ego actions `[S, C, 2]`
(acceleration m/s², curvature 1/m) in its `forward`; `plan(scen, world)` drives it closed loop through
the world model from the scenario's `current_step` and returns the ego actions `[S, T, 2]` (zeros
before `current_step`; the last step holds the action the policy would take there, which the world
never applies).

Built-ins:
- `logged@1`: the logged behaviour, `world.baseline_actions(scen)` (the inverse bicycle of the log).
- `rule@1`: IDM car-following towards the lane's speed limit plus pure-pursuit lane keeping on the
  nearest lane centre (parameters in `policies.rule` of replay.yaml).
- `bc@<n>`: a small MLP over observation features (a subset of `features.FEATURES`, named in its
  manifest) trained by behaviour cloning (`fleetloop.replay.train`), loaded from a safetensors
  checkpoint and its JSON manifest in a checkpoint directory: `bc@<n>.safetensors` and `bc@<n>.json`.
  The manifest records the sha256 of the weights file, the feature list and what the policy was
  trained on; loading checks both.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.features import FEATURES, ObservationFeatures, logged_accel
from fleetloop.replay.scenario import EGO, ScenarioBatch

LEARNED = ("bc",)
MANIFEST_FORMAT = 1
INPUT_CLIP_SD = 5.0  # standardised inputs beyond 5 deviations of the training data are held there
PURSUIT = FEATURES.index("pursuit_curvature_1pm")


class PolicyError(ValueError):
    """A policy that cannot be had: unknown, missing or damaged."""


class PolicyNotFound(PolicyError):
    """An unknown policy name or version; the message lists the known ones."""


class CheckpointError(PolicyError):
    """A checkpoint whose weights do not match its manifest, or whose features differ from the code's."""


class WorldStateLike(Protocol):
    """What a policy reads of `fleetloop.replay.world.WorldState`: `[S, C, A]` tensors and the step `k`."""

    x: torch.Tensor
    y: torch.Tensor
    heading: torch.Tensor
    speed: torch.Tensor
    valid: torch.Tensor
    k: int


class WorldLike(Protocol):
    """What a policy uses of `fleetloop.replay.world.WorldModel`."""

    def baseline_actions(self, scen: ScenarioBatch) -> torch.Tensor: ...

    def initial(self, scen: ScenarioBatch, n_candidates: int) -> Any: ...

    def step(self, state: Any, scen: ScenarioBatch, ego_action: torch.Tensor, k: int) -> Any: ...


@dataclass(frozen=True)
class ActionBounds:
    """The ego's action bounds: acceleration in [accel_min_mps2, accel_max_mps2] (m/s²), curvature in
    [-curvature_max_1pm, curvature_max_1pm] (1/m), as the world model's dynamics enforce them (the
    `dynamics` section's accel_max_mps2, decel_max_mps2 and curvature_max_inv_m)."""

    accel_min_mps2: float
    accel_max_mps2: float
    curvature_max_1pm: float

    @classmethod
    def from_config(cls, config: ReplayConfig) -> ActionBounds:
        dyn = config.section("dynamics")
        try:
            return cls(-float(dyn["decel_max_mps2"]), float(dyn["accel_max_mps2"]), float(dyn["curvature_max_inv_m"]))
        except KeyError as missing:
            raise KeyError(f"replay config: dynamics.{missing.args[0]} is missing") from None

    def low(self) -> tuple[float, float]:
        return self.accel_min_mps2, -self.curvature_max_1pm

    def high(self) -> tuple[float, float]:
        return self.accel_max_mps2, self.curvature_max_1pm

    def clamp(self, actions: torch.Tensor) -> torch.Tensor:
        """`actions [..., 2]` clamped into the bounds."""
        low = torch.tensor(self.low(), dtype=actions.dtype, device=actions.device)
        high = torch.tensor(self.high(), dtype=actions.dtype, device=actions.device)
        return torch.minimum(torch.maximum(actions, low), high)


class Policy(torch.nn.Module):
    """An ego policy (see the module docstring). Subclasses implement `forward`."""

    name: str = ""
    version: int = 0

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    def forward(self, state: WorldStateLike, scen: ScenarioBatch, world: WorldLike,
                ego_accel: torch.Tensor) -> torch.Tensor:
        """Ego actions `[S, C, 2]` (m/s², 1/m) for the state at step `state.k`; `ego_accel` `[S, C]` is the
        ego's acceleration over the step before (m/s²)."""
        raise NotImplementedError

    def plan(self, scen: ScenarioBatch, world: WorldLike) -> torch.Tensor:
        """Ego actions `[S, T, 2]` planned closed loop from `scen.current_step` (one candidate per
        scenario). The module is moved to the scenario's device first."""
        self.to(scen.device)
        t, k0 = scen.n_steps, scen.current_step
        actions = torch.zeros(scen.n_scenarios, t, 2, dtype=torch.float32, device=scen.device)
        state = world.initial(scen, 1)
        accel = logged_accel(scen)[:, k0, None]
        with torch.no_grad():
            for k in range(k0, t):
                action = self(state, scen, world, accel)
                actions[:, k] = action[:, 0]
                if k + 1 < t:
                    after = world.step(state, scen, action, k)
                    accel = (after.speed[..., EGO] - state.speed[..., EGO]) / scen.dt_s  # as applied (speed floor)
                    state = after
        return actions


class LoggedPolicy(Policy):
    """What the vehicle did: the world model's baseline actions (inverse bicycle of the log, clamped)."""

    name, version = "logged", 1

    def forward(self, state: WorldStateLike, scen: ScenarioBatch, world: WorldLike,
                ego_accel: torch.Tensor) -> torch.Tensor:
        n_candidates = state.x.shape[1]
        return world.baseline_actions(scen)[:, state.k, None].expand(-1, n_candidates, -1)

    def plan(self, scen: ScenarioBatch, world: WorldLike) -> torch.Tensor:
        actions = world.baseline_actions(scen).clone()
        actions[:, :scen.current_step] = 0.0
        return actions


@dataclass(frozen=True)
class RuleParams:
    """The `policies.rule` section: IDM (m/s², m, s, exponent) and the cruise fraction of the limit."""

    accel_mps2: float
    comfort_decel_mps2: float
    min_gap_m: float
    headway_s: float
    delta: float
    speed_factor: float

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RuleParams:
        return cls(**{k: float(raw[k]) for k in cls.__dataclass_fields__})


class RulePolicy(Policy):
    """IDM car-following towards `speed_factor` × the lower of the lane's and the preview point's speed
    limits, and pure pursuit on the nearest lane centre; clamped to the action bounds."""

    name, version = "rule", 1

    def __init__(self, features: ObservationFeatures, params: RuleParams, bounds: ActionBounds) -> None:
        super().__init__()
        self.features = features
        self.params = params
        self.bounds = bounds

    def forward(self, state: WorldStateLike, scen: ScenarioBatch, world: WorldLike,
                ego_accel: torch.Tensor) -> torch.Tensor:
        f = self.features.compute(state.x, state.y, state.heading, state.speed, state.valid, ego_accel, scen)
        return self.decide(f)

    def decide(self, f: torch.Tensor) -> torch.Tensor:
        """Actions `[..., 2]` from features `[..., F]` (order of `FEATURES`)."""
        p = self.params
        col = {name: f[..., i] for i, name in enumerate(FEATURES)}
        v = col["speed_mps"].clamp_min(0.0)
        v0 = (p.speed_factor * torch.minimum(col["speed_limit_mps"], col["preview_limit_mps"])).clamp_min(0.1)
        free = 1.0 - (v / v0) ** p.delta
        desired_gap = p.min_gap_m + (v * p.headway_s + v * col["lead_closing_mps"]
                                     / (2.0 * (p.accel_mps2 * p.comfort_decel_mps2) ** 0.5)).clamp_min(0.0)
        interaction = (desired_gap / col["lead_gap_m"].clamp_min(0.1)) ** 2 * col["lead_present"]
        accel = p.accel_mps2 * (free - interaction)
        return self.bounds.clamp(torch.stack([accel, col["pursuit_curvature_1pm"]], dim=-1))


class BehaviourCloningPolicy(Policy):
    """An MLP over a subset `inputs` of the observation features, standardised with the training data's
    mean and deviation and clipped to ±`INPUT_CLIP_SD` of it (the net never extrapolates past what it
    saw), its two outputs squashed by tanh: acceleration = mid + half_range × tanh(z0); curvature = the
    pure-pursuit curvature plus a learned residual curvature_max × tanh(z1), clamped to the bounds.
    The residual form keeps the lane-keeping geometry exact at every speed: the fleet's data pins the
    curvature down to ~0.005 1/m, which at highway speed alone would drift a lane width in seconds."""

    name = "bc"

    def __init__(self, features: ObservationFeatures, bounds: ActionBounds, hidden: Sequence[int],
                 inputs: Sequence[str], version: int = 0) -> None:
        super().__init__()
        unknown = [n for n in inputs if n not in FEATURES]
        if unknown or not inputs:
            raise CheckpointError(f"bc inputs {list(inputs)}: unknown {unknown}; the features are {list(FEATURES)}")
        self.features = features
        self.version = version
        self.hidden = tuple(int(h) for h in hidden)
        self.inputs = tuple(inputs)
        layers: list[torch.nn.Module] = []
        width = len(self.inputs)
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.Tanh()]
            width = h
        layers.append(torch.nn.Linear(width, 2))
        self.net = torch.nn.Sequential(*layers)
        low, high = torch.tensor(bounds.low()), torch.tensor(bounds.high())
        self.register_buffer("input_index", torch.tensor([FEATURES.index(n) for n in self.inputs]), persistent=False)
        self.register_buffer("input_mean", torch.zeros(len(self.inputs)))
        self.register_buffer("input_std", torch.ones(len(self.inputs)))
        self.register_buffer("action_mid", (high + low) / 2)
        self.register_buffer("action_half", (high - low) / 2)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise the weights uniformly in ±1/sqrt(fan_in) (torch's default range) from `generator`."""
        for layer in self.net:
            if isinstance(layer, torch.nn.Linear):
                bound = layer.in_features ** -0.5
                torch.nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
                torch.nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    def set_normalisation(self, f: torch.Tensor) -> None:
        """Input standardisation from training features `[N, F]` (deviation floored at 1e-3)."""
        x = f[:, self.input_index]
        self.input_mean.copy_(x.mean(dim=0))
        self.input_std.copy_(x.std(dim=0).clamp_min(1e-3))

    def act(self, f: torch.Tensor) -> torch.Tensor:
        """Actions `[..., 2]` (m/s², 1/m) from features `[..., F]` (all of `FEATURES`)."""
        z = ((f[..., self.input_index] - self.input_mean) / self.input_std).clamp(-INPUT_CLIP_SD, INPUT_CLIP_SD)
        out = torch.tanh(self.net(z))
        accel = self.action_mid[0] + self.action_half[0] * out[..., 0]
        kmax = self.action_half[1]
        curvature = (f[..., PURSUIT] + kmax * out[..., 1]).clamp(self.action_mid[1] - kmax, self.action_mid[1] + kmax)
        return torch.stack([accel, curvature], dim=-1)

    def forward(self, state: WorldStateLike, scen: ScenarioBatch, world: WorldLike,
                ego_accel: torch.Tensor) -> torch.Tensor:
        f = self.features.compute(state.x, state.y, state.heading, state.speed, state.valid, ego_accel, scen)
        return self.act(f)


# ---------------------------------------------------------------------------------------- registry

_SPEC = re.compile(r"^([a-z][a-z0-9_]*)@([1-9][0-9]*)$")


def parse_spec(spec: str) -> tuple[str, int]:
    """`"name@version"` → (name, version); a malformed spec raises PolicyNotFound."""
    m = _SPEC.match(spec)
    if not m:
        raise PolicyNotFound(f"policy spec {spec!r} is not name@version (e.g. rule@1)")
    return m.group(1), int(m.group(2))


def checkpoint_paths(checkpoint_dir: Path, name: str, version: int) -> tuple[Path, Path]:
    """(weights, manifest) paths of `name@version` in `checkpoint_dir`."""
    stem = f"{name}@{version}"
    return checkpoint_dir / f"{stem}.safetensors", checkpoint_dir / f"{stem}.json"


def learned_versions(checkpoint_dir: Path | None, name: str = "bc") -> list[int]:
    """Versions of learned policy `name` with a manifest in `checkpoint_dir`, ascending."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return []
    found = []
    for p in Path(checkpoint_dir).glob(f"{name}@*.json"):
        m = _SPEC.match(p.stem)
        if m and m.group(1) == name:
            found.append(int(m.group(2)))
    return sorted(found)


def list_policies(checkpoint_dir: Path | None = None) -> list[str]:
    """Every policy spec `get_policy` can load: the built-ins and the checkpoints in `checkpoint_dir`."""
    learned = [f"{name}@{v}" for name in LEARNED for v in learned_versions(checkpoint_dir, name)]
    return [f"{p.name}@{p.version}" for p in (LoggedPolicy, RulePolicy)] + learned


def get_policy(spec: str, config: ReplayConfig, checkpoint_dir: Path | str | None = None) -> Policy:
    """The policy `spec` (`name@version`) in eval mode, on the CPU (`plan` moves it to the scenario's
    device). Raises PolicyNotFound for an unknown name or version (the message lists the known
    specs) and CheckpointError for a checkpoint that fails its manifest's checks."""
    name, version = parse_spec(spec)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    section = config.section("policies")
    if name == LoggedPolicy.name and version == LoggedPolicy.version:
        return LoggedPolicy().eval()
    if name == RulePolicy.name and version == RulePolicy.version:
        return RulePolicy(ObservationFeatures.from_config(section), RuleParams.from_mapping(section["rule"]),
                          ActionBounds.from_config(config)).eval()
    if name in LEARNED and version in learned_versions(ckpt, name):
        return load_checkpoint(ckpt, name, version, config)  # type: ignore[arg-type]
    where = f" in {ckpt}" if ckpt is not None else " (no checkpoint directory given)"
    raise PolicyNotFound(f"unknown policy {spec!r}{where}; known: {', '.join(list_policies(ckpt))}")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_checkpoint(policy: BehaviourCloningPolicy, checkpoint_dir: Path | str,
                    trained_on: Mapping[str, Any]) -> Path:
    """Write `bc@<version>.safetensors` and its manifest into `checkpoint_dir`; returns the manifest path.
    `trained_on` describes the training (data, seed, config version, losses) and goes into the manifest."""
    out = Path(checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights, manifest = checkpoint_paths(out, policy.name, policy.version)
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}, str(weights))
    body = {"format": MANIFEST_FORMAT, "name": policy.name, "version": policy.version, "spec": policy.spec,
            "weights": weights.name, "sha256": sha256_file(weights), "features": list(policy.inputs),
            "hidden": list(policy.hidden), "trained_on": dict(trained_on)}
    manifest.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(checkpoint_dir: Path | str, name: str, version: int) -> dict[str, Any]:
    """The manifest of `name@version` in `checkpoint_dir` (PolicyNotFound when there is none)."""
    _, manifest = checkpoint_paths(Path(checkpoint_dir), name, version)
    if not manifest.is_file():
        raise PolicyNotFound(f"no manifest {manifest} for {name}@{version}")
    try:
        return json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"manifest {manifest} is not JSON: {exc}") from exc


def load_checkpoint(checkpoint_dir: Path | str, name: str, version: int,
                    config: ReplayConfig) -> BehaviourCloningPolicy:
    """Load `name@version` from `checkpoint_dir`, checking the weights' sha256 and the feature list
    against the manifest (CheckpointError on a mismatch, PolicyNotFound on a missing file)."""
    spec = f"{name}@{version}"
    weights, manifest_path = checkpoint_paths(Path(checkpoint_dir), name, version)
    manifest = read_manifest(checkpoint_dir, name, version)
    if manifest.get("name") != name or manifest.get("version") != version:
        raise CheckpointError(f"{manifest_path} describes {manifest.get('name')}@{manifest.get('version')}, "
                              f"not {spec}")
    if not weights.is_file():
        raise PolicyNotFound(f"{spec}: weights file {weights} is missing")
    digest = sha256_file(weights)
    if digest != manifest.get("sha256"):
        raise CheckpointError(f"{spec}: {weights.name} has sha256 {digest}, the manifest says "
                              f"{manifest.get('sha256')} (tampered or from another training run)")
    inputs = list(manifest.get("features", []))
    if not inputs or any(n not in FEATURES for n in inputs):
        raise CheckpointError(f"{spec}: trained on features {inputs}, this code computes {list(FEATURES)}")
    policy = BehaviourCloningPolicy(ObservationFeatures.from_config(config.section("policies")),
                                    ActionBounds.from_config(config), manifest["hidden"], inputs, version=version)
    try:
        policy.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{spec}: weights do not fit the manifest's architecture: {exc}") from exc
    return policy.eval()

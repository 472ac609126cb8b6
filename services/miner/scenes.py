"""Problem scenes and curricula.

A *problem* is a case (table `cases`) or, until cases exist, a trigger event (table
`trigger_events`): a vehicle, a moment and the trigger that fired. `problem_features` turns each
into one vector: a one-hot of its trigger and, per scene tag, the share of the problem's window
seconds where the tag was TRUE. `cluster_problems` groups the vectors into typical scenes:

- algorithm: k-means (scikit-learn, `n_init` restarts, fixed seed). The features are bounded
  shares and one-hots on one scale, the clusters are read through their centroids (a centroid
  coordinate is the share of a scene's seconds carrying a tag), which is exactly what naming a
  scene by its dominant tags needs; DBSCAN/agglomerative give no centroid and need a distance
  threshold that has no meaning for users.
- k: the k in [2, max_clusters] with the best silhouette (cosine-free Euclidean on the same
  features); below `min_problems` everything is one scene.
- name: the dominant trigger and the tags whose centroid share is at least `dominant_share`;
  the scene's mining expression is the conjunction of its top `expression_tags` dominant tags.

A *curriculum* is data: stages with a scene (a cluster name or an expression), a sample count
and a weight; `manifest_table` turns mined clips into the weighted dataset manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from fleetloop.config import ConfigModel, parse_yaml, safe_load
from fleetloop.labels import Taxonomy
from pydantic import Field
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

CONFIG = Path(__file__).with_name("miner.yaml")


@dataclass(frozen=True)
class SceneConfig:
    """Clustering knobs (miner.yaml, with the reasons)."""

    window_pre_s: int
    window_post_s: int
    families: tuple[str, ...]
    max_clusters: int
    min_problems: int
    dominant_share: float
    expression_tags: int
    trigger_weight: float
    seed: int

    @classmethod
    def load(cls, path: Path = CONFIG) -> SceneConfig:
        data = safe_load(path.read_text(), source=str(path))["scenes"]
        return cls(window_pre_s=int(data["window_pre_s"]), window_post_s=int(data["window_post_s"]),
                   families=tuple(data["families"]), max_clusters=int(data["max_clusters"]),
                   min_problems=int(data["min_problems"]), dominant_share=float(data["dominant_share"]),
                   expression_tags=int(data["expression_tags"]), trigger_weight=float(data["trigger_weight"]),
                   seed=int(data["seed"]))


@dataclass(frozen=True)
class Problem:
    """One case or trigger event: `problem_id`, vehicle, `onset_ms` (epoch ms UTC), trigger name."""

    problem_id: str
    vehicle_id: str
    onset_ms: int
    trigger: str
    category: str = ""


@dataclass
class Scene:
    name: str
    expression: str
    dominant_tags: list[str]
    dominant_trigger: str
    members: list[str]


@dataclass
class Clustering:
    scenes: list[Scene]
    silhouette: float
    labels: np.ndarray


def scene_tags(taxonomy: Taxonomy, families: Sequence[str]) -> list[str]:
    """The tags that describe a scene (environment, road, agents, ego, perception)."""
    return [t.name for t in taxonomy.active_tags if t.family in families]


def problem_features(problems: Sequence[Problem], tag_share: np.ndarray, triggers: Sequence[str],
                     trigger_weight: float) -> np.ndarray:
    """Feature matrix (n_problems, n_triggers + n_tags).

    tag_share: (n_problems, n_tags), share in [0, 1] of each problem's window seconds with the tag
    TRUE (0 when the window has no labelled second). triggers: the trigger vocabulary (one-hot
    columns, scaled by trigger_weight so one trigger weighs like that many tags).
    """
    onehot = np.zeros((len(problems), len(triggers)))
    index = {name: i for i, name in enumerate(triggers)}
    for row, problem in enumerate(problems):
        onehot[row, index[problem.trigger]] = trigger_weight
    return np.hstack([onehot, np.asarray(tag_share, float)])


def cluster_problems(problems: Sequence[Problem], tag_share: np.ndarray, tags: Sequence[str],
                     config: SceneConfig, max_clusters: int | None = None) -> Clustering:
    """Cluster problems into scenes (see the module docstring). Deterministic for a given input."""
    triggers = sorted({p.trigger for p in problems})
    features = problem_features(problems, tag_share, triggers, config.trigger_weight)
    n = len(problems)
    limit = min(max_clusters or config.max_clusters, n - 1)
    labels, score = np.zeros(n, int), 0.0
    if n >= config.min_problems and limit >= 2 and len(np.unique(features, axis=0)) > 2:
        best = None
        for k in range(2, limit + 1):
            fitted = KMeans(n_clusters=k, n_init=10, random_state=config.seed).fit(features)
            if len(set(fitted.labels_)) < 2:
                continue
            s = float(silhouette_score(features, fitted.labels_))
            if best is None or s > best[0] + 1e-9:
                best = (s, fitted.labels_)
        if best is not None:
            score, labels = best
    scenes = []
    share = np.asarray(tag_share, float)
    for cluster in sorted(set(labels.tolist()), key=lambda c: -int(np.sum(labels == c))):
        members = np.flatnonzero(labels == cluster)
        centroid = share[members].mean(axis=0) if share.size else np.zeros(len(tags))
        order = np.argsort(-centroid, kind="stable")
        dominant = [tags[i] for i in order if centroid[i] >= config.dominant_share]
        counts: dict[str, int] = {}
        for m in members:
            counts[problems[m].trigger] = counts.get(problems[m].trigger, 0) + 1
        trigger = max(sorted(counts), key=lambda t: counts[t])
        expression = " & ".join(dominant[: config.expression_tags])
        name = f"{trigger}: {' & '.join(dominant[:4]) or 'mixed scenes'}"
        scenes.append(Scene(name, expression, dominant, trigger, [problems[m].problem_id for m in members]))
    return Clustering(scenes, score, labels)


def window_shares(problems: Sequence[Problem], vehicle: np.ndarray, ts_ms: np.ndarray, tag_bits: np.ndarray,
                  window_pre_s: int, window_post_s: int) -> np.ndarray:
    """(n_problems, n_tags) share of window seconds with each tag TRUE.

    vehicle, ts_ms: (n,) label seconds; tag_bits: (n, n_tags) bool TRUE flags of those seconds.
    A problem's window is [onset - pre, onset + post).
    """
    out = np.zeros((len(problems), tag_bits.shape[1]))
    for row, p in enumerate(problems):
        mask = (vehicle == p.vehicle_id) & (ts_ms >= p.onset_ms - 1000 * window_pre_s) \
            & (ts_ms < p.onset_ms + 1000 * window_post_s)
        if mask.any():
            out[row] = tag_bits[mask].mean(axis=0)
    return out


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: what to mine (`expression`, or a `scene` name resolved to one)."""

    scene: str
    samples: int
    weight: float = 1.0
    expression: str = ""


@dataclass(frozen=True)
class Curriculum:
    name: str
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    @classmethod
    def from_yaml(cls, text: str) -> Curriculum:
        """Parse a curriculum: {name, stages: [{scene, samples, weight?, expression?}]}.

        The text comes from the wire: it is read by the one safe loader with a small expansion bound (an
        alias bomb is refused before it is built) and validated as `CurriculumFile`; anything wrong is a
        ConfigError (a ValueError) naming the key path, e.g. `curriculum: stages.1.weight: ...`.
        """
        file = parse_yaml(text, CurriculumFile, source="curriculum", max_nodes=MAX_CURRICULUM_NODES)
        return cls(file.name, tuple(Stage(s.scene, s.samples, s.weight, s.expression) for s in file.stages))


# A curriculum names a few dozen stages; 10,000 YAML nodes after alias expansion is far beyond any real one.
MAX_CURRICULUM_NODES = 10_000


class StageModel(ConfigModel):
    scene: str = Field(min_length=1, max_length=200)
    samples: int = Field(ge=1, le=1_000_000)
    weight: float = Field(1.0, gt=0)
    expression: str = Field("", max_length=10_000)


class CurriculumFile(ConfigModel):
    """A curriculum as sent: its name and a non-empty list of stages (NaN or inf weights are refused)."""

    name: str = Field("curriculum", max_length=200)
    stages: list[StageModel] = Field(min_length=1, max_length=1_000)


MANIFEST_SCHEMA = pa.schema([("stage", pa.int32()), ("scene", pa.string()), ("expression", pa.string()),
                             ("vehicle_id", pa.string()), ("start_ms", pa.int64()), ("end_ms", pa.int64()),
                             ("weight", pa.float64())])


def manifest_table(stage_clips: Sequence[tuple[int, Stage, str, Sequence[tuple[str, int, int]]]]) -> pa.Table:
    """The dataset manifest: one row per clip (stage number, scene, expression, clip, weight).

    stage_clips: (stage number from 1, stage, resolved expression, [(vehicle_id, start_ms, end_ms)]).
    """
    rows = [(number, stage.scene, expression, v, s, e, stage.weight)
            for number, stage, expression, clips in stage_clips for v, s, e in clips]
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in MANIFEST_SCHEMA]
    return pa.table([pa.array(list(c), f.type) for c, f in zip(columns, MANIFEST_SCHEMA, strict=True)],
                    schema=MANIFEST_SCHEMA)

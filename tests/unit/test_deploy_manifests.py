"""docker-compose.yml and k8s/ are written for real clusters (no Docker engine here): check that
they hang together with the code — services exist, ports and consumer groups match, selectors
select, every kustomize resource is there."""

from __future__ import annotations

import yaml
from fleetloop import topics
from fleetloop.runtime import SERVICES

from services.heartbeat_ingest import service as heartbeat_ingest
from services.replay_validator import service as replay_validator
from services.trigger_engine import service as trigger_engine
from tests.support import REPO_ROOT

ROOT = REPO_ROOT
URL_VARIABLES = {"KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL", "REDIS_URL"}
# The services that scale by replicas on their consumer lag: (consumer group, topics consumed), from the code.
SCALED = {"heartbeat-ingest": (heartbeat_ingest.GROUP_ID, set(heartbeat_ingest.PAYLOAD_BY_TOPIC)),
          "trigger-engine": (trigger_engine.GROUP_ID, set(trigger_engine.PAYLOAD_BY_TOPIC)),
          "replay-validator": (replay_validator.GROUP_ID, {topics.REPLAY_REQUESTS})}


def test_compose_runs_registered_services_against_real_parts():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    fleetloop = {name: s for name, s in services.items() if s.get("image") == "fleetloop:latest"}
    assert set(fleetloop) == set(SERVICES), "every registered service runs, and nothing else"
    for name, service in fleetloop.items():
        assert service["command"] == ["serve", name]
        assert URL_VARIABLES <= set(service["environment"])
        assert set(service["depends_on"]) <= set(services)
        port = SERVICES[name][1]
        if port:
            assert f"{port}:{port}" in service["ports"]


def test_kustomization_resources_and_deployments():
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        path = ROOT / "k8s" / resource
        assert path.exists(), resource
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        (container,) = spec["template"]["spec"]["containers"]
        assert container["args"] == ["serve", name]
        assert container["envFrom"][0]["configMapRef"]["name"] == "fleetloop-endpoints"
        port = SERVICES[name][1]
        if port:
            assert container["ports"][0]["containerPort"] == port
            assert container["readinessProbe"]["grpc"]["port"] == port
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert URL_VARIABLES <= set(config["data"])
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name, service in services.items():
        template_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= template_labels.items()
    scaled_objects = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert set(scaled_objects) == set(SCALED), "each lag-scaled service has its ScaledObject, and only they"
    for target, scaled in scaled_objects.items():
        assert target in deployments
        group_id, consumed = SCALED[target]
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["metadata"]["consumerGroup"] == group_id
        assert trigger["metadata"]["topic"] in consumed

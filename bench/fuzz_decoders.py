"""Fuzz run: the fleetloop decoders under atheris (coverage-guided, libFuzzer), a fixed number of runs.

Every input is split into a decoder choice, a key choice and the message bytes, and goes through
`codec.decode` (the four fleet topics), `codec.decode_trigger` (strict and loose) or
`codec.decode_manifest`. Any exception but `codec.Rejected` is a crash: libFuzzer stops, prints the
input and the process exits non-zero. The seed corpus is real simulator traffic plus one trigger
and one manifest, so mutation starts past the parser. Deterministic for a given --runs and --seed.

Run: `python bench/fuzz_decoders.py [--quick] [--runs N]`. Prints runs/s and "no crash" (exit 1 and
libFuzzer's report on a crash); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import atheris

# Coverage of the codec only: instrumenting its dependencies too took ~27 s of start-up for nothing.
with atheris.instrument_imports(include=["fleetloop.codec"]):
    from fleetloop import codec

from fleetloop.sim import FleetSimulator, SimConfig
from fleetloop.v1 import triggers_pb2, uploads_pb2

# The first input byte picks the decoder, the second whether the key matches the value's vehicle id.
DECODERS = (
    *(lambda key, value, topic=topic: codec.decode(topic, key, value) for topic in codec.PAYLOAD_BY_TOPIC),
    lambda key, value: codec.decode_trigger(value, key),
    lambda key, value: codec.decode_trigger(value, key, strict=False),
    lambda key, value: codec.decode_manifest(value, key),
)
SEED_VEHICLE = b"veh-000"
MAX_LEN = 20_000  # above every topic's byte limit, so "oversized" is reachable


def one_input(data: bytes) -> None:
    """One fuzz input: [decoder selector, key selector, message bytes...]."""
    if len(data) < 2:
        return
    decoder = DECODERS[data[0] % len(DECODERS)]
    key = (None, SEED_VEHICLE, data[2:10])[data[1] % 3]
    value = None if data[1] == 255 else data[2:]  # 255: a tombstone
    try:
        decoder(key, value)
    except codec.Rejected:
        pass


def seed_corpus(directory: Path) -> int:
    """Write real messages, each behind its decoder's selector byte, into `directory`; returns the count."""
    decoder_of = {topic: index for index, topic in enumerate(codec.PAYLOAD_BY_TOPIC)}
    seeds: list[bytes] = []
    sim = FleetSimulator(SimConfig(vehicles=2, duration_s=20, incidents_per_vehicle_hour=60))
    for second in sim.seconds():
        for topic, env in second.messages[:6]:
            seeds.append(bytes([decoder_of[topic], 0]) + env.SerializeToString())
    trigger = triggers_pb2.TriggerEvent(trigger_id="t", vehicle_id=SEED_VEHICLE.decode(), trigger="hard_brake",
                                        onset_ms=codec.MIN_EVENT_MS + 1, end_ms=codec.MIN_EVENT_MS + 2,
                                        measurements={"peak_decel_mps2": 6.0})
    manifest = uploads_pb2.UploadManifest(schema_version=1, vehicle_id=SEED_VEHICLE.decode(), case_id="c",
                                          request_id="r", tier="minilog", state=uploads_pb2.UPLOAD_STATE_COMPLETE,
                                          uri="file:///x", size_bytes=1, sha256="0" * 64)
    seeds += [bytes([len(codec.PAYLOAD_BY_TOPIC), 1]) + trigger.SerializeToString(),
              bytes([len(DECODERS) - 1, 1]) + manifest.SerializeToString()]
    for index, seed in enumerate(seeds):
        (directory / f"seed-{index:04d}").write_bytes(seed)
    return len(seeds)


def fuzz(runs: int, seed: int) -> None:
    """The libFuzzer process: it ends the process itself (exit 0 when the runs are done)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-decoders-") as corpus:
        seed_corpus(Path(corpus))
        # A crashing input is written to the temp dir (libFuzzer prints its path), not into the checkout.
        crashes = Path(tempfile.gettempdir()) / "fuzz_decoders-"
        atheris.Setup([sys.argv[0], f"-runs={runs}", f"-seed={seed}", f"-max_len={MAX_LEN}",
                       f"-artifact_prefix={crashes}", corpus], one_input)
        atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 runs (seconds)")
    parser.add_argument("--runs", type=int, default=0, help="inputs to run (default 1,000,000; --quick 100,000)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    runs = args.runs or (100_000 if args.quick else 1_000_000)
    if args.child:
        fuzz(runs, args.seed)
        return
    # libFuzzer exits the process without returning, so a child fuzzes and this one reports.
    started = time.perf_counter()
    child = subprocess.run([sys.executable, __file__, "--child", f"--runs={runs}", f"--seed={args.seed}"],
                           capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    done = re.search(r"Done (\d+) runs", child.stderr)
    coverage = re.findall(r"cov: (\d+)", child.stderr)
    if child.returncode != 0 or done is None:
        print(child.stdout[-4000:] + child.stderr[-8000:])
        print(json.dumps({"bench": "fuzz_decoders", "runs": runs, "crash": True, "exit": child.returncode}))
        sys.exit(1)
    ran = int(done.group(1))
    print(f"{len(DECODERS)} decoders, {ran} runs in {elapsed:.1f} s (process start and seed corpus included): "
          f"{ran / elapsed:,.0f} runs/s, coverage {coverage[-1] if coverage else '?'} edges, no crash")
    print(json.dumps({"bench": "fuzz_decoders", "runs": ran, "seconds": round(elapsed, 2),
                      "runs_per_s": round(ran / elapsed), "coverage_edges": int(coverage[-1]) if coverage else None,
                      "crash": False}))


if __name__ == "__main__":
    main()

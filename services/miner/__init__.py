"""miner: MinerService over the per-second labels (mine, count, distribution, explain, tags),
problem scenes (clusters of cases) and curricula."""

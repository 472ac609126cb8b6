"""replay-validator: consumes replay requests, rebuilds each case's scene from its minilog, searches
what-if ego trajectories in batches, writes the solutions table and the pair objects, publishes
loop.solutions.v1 and serves ReplayService."""

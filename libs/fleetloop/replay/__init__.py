"""Counterfactual replay: scenarios as tensors, a torch world model, cost terms, policies, a search
over what-if ego trajectories, a Pareto front and the compact ScenarioSolutionPair. Pure: tensors in,
tensors and messages out (no Kafka, ClickHouse or Redis)."""

"""`fleetloop` CLI command groups, one typer app per area (mounted by fleetloop.cli)."""

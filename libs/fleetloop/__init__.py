"""fleetloop: the data closed loop for an autonomous-vehicle fleet (shared library)."""

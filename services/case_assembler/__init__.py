"""case-assembler: turns triggers into cases with deterministic CaseIDs, asks vehicles for the right
data tiers under a bandwidth budget, follows each upload to completion, and serves CaseService."""

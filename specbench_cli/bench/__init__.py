"""What a run is asked: question files (Spec-Bench's six subtasks, checksum-verified downloads,
suites/*.yaml) and the prompts built from them."""

"""From answer files to numbers: loading runs (results), the Spec-Bench metrics, the report's
tables, comparison with baselines and published numbers (published/*.yaml), plots, the cost
model. Imports neither torch nor the engine, so reading a run stays fast."""

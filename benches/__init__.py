"""roost's benches: one module per figure, each measured against a baseline in the same run."""

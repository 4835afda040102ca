"""Fitness: item banks, batched scoring, IRT calibration and subsampled accuracy estimation."""

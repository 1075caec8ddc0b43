"""Footage with ground truth, for tests and benchmarks (not a stage of the streamer): the synthetic
families (things, patchwork, rig) and reference masks for real clips (reference_masks)."""

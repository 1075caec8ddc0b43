"""Streamer: video sources -> shots -> optical flow -> online motion masks -> pruning -> trimaps."""

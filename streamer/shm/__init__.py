"""Shared memory between the streamers and the learner: a segment (segment), the ring buffer of
samples (ringbuffer) and the store of tracked patch pairs (pairbuffer)."""

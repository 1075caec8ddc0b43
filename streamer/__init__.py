"""The streamer: video in, motion masks and training samples out.

sources/   files, folders, cameras and network streams -> RGB Frames (frames.py)
motion/    the motion pipeline: shots -> flow -> camera motion -> superpixels -> voting ->
           prune -> trimap (motion/pipeline.py runs them in order; patches.py tracks pairs)
shm/       shared memory: a segment, the ring buffer of samples, the store of patch pairs
live/      live masks over ZeroMQ: the wire format (protocol) and the publisher (publish)
config.py  the `streamer:` section; writer.py, overlay.py, png.py: masks on disk and for eyes
"""

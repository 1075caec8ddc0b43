"""What every package shares, and the leaf of the import graph: it imports nothing of the project.

errors       UserError, SourceError: a problem the user can fix, shown as one line
log          log_event: one key=value line per event
atomic       atomic and durable file writes
pids         pid_alive: is the writer of a temp file or a shared-memory row still running?
json_input   JSON from outside, every failure a ValueError
config       the strict config loader: from_dict, merge, check
npcv         NumPy stand-ins for the few OpenCV calls on a device's path (no OpenCV installed)
"""

"""A soak of a real `motionmask run` under a seeded, logged fault schedule (issue 22).

One daemon with two cameras (the bundled clip looping; a live H.264/MPEG-TS stream on loopback
served by a process this script controls), the learner with signed exports every few steps, a
`motionmask device` that pins the signing key and pulls bundles through a TCP proxy, and two
subscribers (one reads every mask, one never reads). Then, until --minutes are up, one fault at a
time, drawn with --seed, each followed by a check that the rig recovered within a bound:

  camera_kill        SIGKILL a camera process      its camera runs again, frames counting
  learner_kill       SIGKILL the learner           it resumes from a checkpoint and trains
  device_kill        SIGKILL the device            restarted (as systemd would), back on the latest bundle
  daemon_kill        SIGKILL the daemon            its children exit (they watch it), a new one starts
                                                   (as systemd would: cgroup emptied, RestartSec), all runs
  stream_stop        the network camera off 5-60 s its camera decodes again after it returns
  disk_full          the run dir's file system     training goes on, a new checkpoint once it is freed
                     filled for 5-20 s, then freed
  junk               malformed and oversized       every endpoint still answers, masks still flow
                     messages to every socket the
                     daemon binds (control, publish, bundles, announce, web)
  bundle_link_down   the device's link to the      the device is back on the latest bundle
                     bundle server cut 5-20 s
  bundle_flip /      a byte flipped in / a cut of  the torn transfer is rejected, the device ends on
  bundle_truncate    a bundle chunk in transit     a whole, verified bundle

The bundle server is a thread of the daemon, so its SIGKILL is the daemon's (daemon_kill);
bundle_link_down is the server vanishing from the device's side. The disk fault mounts a tmpfs
over the run dir (learner checkpoints, exports) when running as root; otherwise it is skipped and
the JSON says so.

Asserted, not just logged: every fault recovered within its bound; every checkpoint loads with the
learner's loader and every bundle (exports and the device's) passes the device's checks (sha256,
signature, onnx.checker, an ONNX Runtime run); the device's model in service is verified at every
sample; no shared memory of the soak's daemons is left after the final stop. Also measured: time
to recover (p50/p99) per kind, masks received vs frames decoded per camera, RSS, open files,
threads and shared-memory segments of the daemon's process tree over time (least-squares slope).

    python -m bench.soak --minutes 20 --seed 0          # the issue's run, ~22 min
    python -m bench.soak --minutes 2 --seed 1 --out /tmp/soak.json

Prints a table and writes bench/out/soak.json (--out); exit 1 when an assertion failed.
"""

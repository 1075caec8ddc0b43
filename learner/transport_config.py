"""Typed configuration of the sample transport between machines (`learner.transport:`), with
`learner.remote` (a rig sends its samples there) and `learner.listen` (`motionmask learn` takes
them in there); see motionmask/remote_send.py, motionmask/remote_learn.py and docs/protocol.md.

No imports from the rest of the project: learner/config.py composes it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The bundle server's default port (export.endpoint) is 5560 and its announcements 5561, so the
# samples listen on 5562: one learner machine runs all three.
DEFAULT_LISTEN = "tcp://127.0.0.1:5562"


@dataclass
class TransportConfig:
    rig: str = ""  # this rig's name in the learner's status and its camera ids (rig/camera); "" = host name
    sndhwm: int = 256  # samples queued for a slow or absent learner before the rig drops (and counts) them
    jpeg_quality: int = 90  # the frame goes as JPEG; trimap and motion probability as lossless PNG
    heartbeat_s: float = 2.0  # ping the peer this often; one silent for 5x this is dropped and reconnected
    bundles: str = ""  # rig: the learner's export.endpoint to pull bundles from; "" = learner.remote's host, port 5560
    trusted_key: str = ""  # rig: the learner's NAME.sign_pub (docs/signing.md): only bundles it signed are taken
    # CurveZMQ (`motionmask keys`): the learner holds a server key pair; each rig holds its own pair
    # and the learner's public key. Empty = plain TCP (fine on loopback and trusted links).
    curve_secret_file: str = ""  # rig: its own NAME.key_secret; learner: the server's NAME.key_secret
    curve_server_key: str = ""  # rig: the learner's public NAME.key
    curve_clients_dir: str = ""  # learner: public keys (*.key) of the rigs it admits; "" = any rig that knows its key
    # The learner's appetite (as DeepMind Reverb's SampleToInsertRatio): samples drawn for training
    # per sample inserted, within +- tolerance samples. Ahead by more, the learner waits for inserts;
    # behind by more, received samples are dropped (counted) rather than inserted. 0 = no limit.
    samples_per_insert: float = 16.0
    tolerance: float = 2048.0  # samples (drawn) of slack either way; >= one training batch
    decoders: int = 2  # learner: threads decoding received samples (JPEG/PNG: about a ms of CPU each)
    max_message_kb: int = 4096  # larger messages are refused by ZeroMQ before they are read
    max_rigs: int = 256  # rigs tracked in status; more distinct names are counted as foreign

    def checks(self, prefix: str = "transport") -> list[tuple[str, bool, str]]:
        return [
            (f"{prefix}.rig", len(self.rig) <= 64 and "/" not in self.rig, "<= 64 characters without '/'"),
            (f"{prefix}.sndhwm", 1 <= self.sndhwm <= 1_000_000, "between 1 and 1000000"),
            (f"{prefix}.jpeg_quality", 10 <= self.jpeg_quality <= 100, "between 10 and 100"),
            (f"{prefix}.heartbeat_s", self.heartbeat_s >= 0, ">= 0 (0 = off)"),
            (
                f"{prefix}.bundles",
                not self.bundles or "://" in self.bundles,
                "empty or a ZeroMQ endpoint such as tcp://learner:5560",
            ),
            (
                f"{prefix}.curve_server_key",
                not self.curve_server_key or bool(self.curve_secret_file),
                f"empty unless learner.{prefix}.curve_secret_file is set (the rig's own key pair)",
            ),
            (
                f"{prefix}.curve_clients_dir",
                not self.curve_clients_dir or bool(self.curve_secret_file),
                f"empty unless learner.{prefix}.curve_secret_file is set (the learner's key pair)",
            ),
            (f"{prefix}.samples_per_insert", 0 <= self.samples_per_insert <= 1e6, ">= 0 (0 = no limit)"),
            (f"{prefix}.tolerance", self.tolerance >= 1, ">= 1 sample"),
            (f"{prefix}.decoders", 1 <= self.decoders <= 64, "between 1 and 64"),
            (f"{prefix}.max_message_kb", 64 <= self.max_message_kb <= 1 << 20, "between 64 and 1048576"),
            (f"{prefix}.max_rigs", 1 <= self.max_rigs <= 100_000, "between 1 and 100000"),
        ]


__all__ = ["DEFAULT_LISTEN", "TransportConfig"]

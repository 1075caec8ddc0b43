"""`/metrics` in the Prometheus exposition format, built at each scrape from the daemon's last
status (prometheus_client's custom-collector API), so the figures are the daemon's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

_CAMERA_COUNTERS = (
    ("frames", "frames processed"),
    ("kept", "frames kept for training"),
    ("pruned", "frames kept out of training"),
    ("drops", "frames or masks dropped"),
    ("restarts", "process restarts"),
)


class StatusCollector(Collector):
    """`snapshot()` returns (status or None, console extras: {"clients", "stream_drops", "exports"})."""

    def __init__(self, snapshot: Callable[[], tuple[dict[str, Any] | None, dict[str, Any]]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        st, extra = self.snapshot()
        up = GaugeMetricFamily("motionmask_daemon_up", "1 when the daemon answered the console's last status request")
        up.add_metric([], 1.0 if st else 0.0)
        yield up
        yield from self._console(extra)
        if not st:
            return
        cams = st.get("cameras", {})
        fps = GaugeMetricFamily("motionmask_camera_fps", "frames per second over the last seconds", labels=["camera"])
        running = GaugeMetricFamily(
            "motionmask_camera_running", "1 when the camera's state is running", labels=["camera"]
        )
        for name, c in cams.items():
            fps.add_metric([name], float(c.get("fps") or 0))
            running.add_metric([name], 1.0 if c.get("state") == "running" else 0.0)
        yield fps
        yield running
        for key, text in _CAMERA_COUNTERS:
            m = CounterMetricFamily(f"motionmask_camera_{key}", f"camera {text}", labels=["camera"])
            for name, c in cams.items():
                m.add_metric([name], float(c.get(key) or 0))
            yield m
        pruned = CounterMetricFamily(
            "motionmask_camera_pruned_by_reason", "frames kept out of training, by reason", labels=["camera", "reason"]
        )
        for name, c in cams.items():
            for reason, n in (c.get("pruned_by") or {}).items():
                pruned.add_metric([name, reason], float(n))
        yield pruned
        buf = st.get("buffer") or {}
        for key, text in (
            ("fill", "samples in the ring buffer"),
            ("capacity", "ring buffer slots"),
            ("fill_fraction", "ring buffer fill, 0-1"),
        ):
            g = GaugeMetricFamily(f"motionmask_buffer_{key}", text)
            g.add_metric([], float(buf.get(key) or 0))
            yield g
        pub = st.get("publisher") or {}
        for key in ("sent", "dropped"):
            m = CounterMetricFamily(f"motionmask_publisher_{key}", f"masks {key} by the publisher")
            m.add_metric([], float(pub.get(key) or 0))
            yield m
        lr = st.get("learner")
        if lr:
            for key, text in (
                ("step", "training steps"),
                ("loss", "training loss (last interval)"),
                ("crops_per_s", "training crops per second"),
                ("bootstrap_round", "bootstrapping rounds done"),
            ):
                if lr.get(key) is not None:
                    g = GaugeMetricFamily(f"motionmask_learner_{key}", text)
                    g.add_metric([], float(lr[key]))
                    yield g

    @staticmethod
    def _console(extra: dict[str, Any]) -> Iterator[Metric]:
        g = GaugeMetricFamily("motionmask_console_clients", "image streams open on this console")
        g.add_metric([], float(extra.get("clients", 0)))
        yield g
        c = CounterMetricFamily("motionmask_console_stream_drops", "images a slow viewer never got (latest-frame-wins)")
        c.add_metric([], float(extra.get("stream_drops", 0)))
        yield c
        ex = extra.get("exports") or {}
        server = ex.get("server")
        if server:
            c = CounterMetricFamily("motionmask_export_pulls", "bundles pulled whole by devices from this daemon")
            c.add_metric([], float(server.get("pulls_total") or 0))
            yield c
            c = CounterMetricFamily("motionmask_export_served_bytes", "bundle bytes served to devices")
            c.add_metric([], float(server.get("bytes_served") or 0))
            yield c
            g = GaugeMetricFamily("motionmask_export_devices", "devices (peer addresses) that pulled a bundle")
            g.add_metric([], float(len(ex.get("devices") or [])))
            yield g
        gate = ex.get("gate")
        if gate and "shipped" in gate:
            c = CounterMetricFamily(
                "motionmask_export_decisions",
                "the export gate's decisions (since the learner process started), by outcome",
                labels=["outcome"],
            )
            for outcome in ("shipped", "skipped", "failed"):
                c.add_metric([outcome], float(gate.get(outcome) or 0))
            yield c
        latest = next((v for v in ex.get("versions", []) if v.get("latest")), None)
        if latest:
            info = InfoMetricFamily("motionmask_export", "the bundle in service (LATEST)")
            info.add_metric([], {"version": str(latest["version"])})
            yield info
            if latest.get("holdout_iou") is not None:
                g = GaugeMetricFamily("motionmask_export_holdout_iou", "holdout IoU of the bundle in service")
                g.add_metric([], float(latest["holdout_iou"]))
                yield g
            if latest.get("step") is not None:
                g = GaugeMetricFamily("motionmask_export_step", "training step of the bundle in service")
                g.add_metric([], float(latest["step"]))
                yield g


def registry(snapshot: Callable[[], tuple[dict[str, Any] | None, dict[str, Any]]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(snapshot))
    return reg


__all__ = ["StatusCollector", "registry"]

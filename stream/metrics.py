"""Prometheus metrics of the service (text exposition on an HTTP port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    """Counters and histograms; each server has its own registry (tests run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.windows = Counter("avsentry_windows", "Windows judged", ["model"], registry=r)
        self.flags = Counter("avsentry_flags", "Windows flagged as likely adversarial", ["model"], registry=r)
        self.latency = Histogram(
            "avsentry_verdict_latency_seconds",
            "From a window's last sample arriving to its verdict being sent",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.batch_size = Histogram(
            "avsentry_batch_windows",
            "Windows per detector batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_depth = Gauge("avsentry_queue_depth", "Windows waiting for a batch", registry=r)
        self.active_streams = Gauge(
            "avsentry_active_streams", "Open StreamAudio and CheckAudio calls", registry=r
        )
        self.errors = Counter(
            "avsentry_stream_errors", "Calls ended with an error status", ["code"], registry=r
        )
        self.load = Gauge(
            "avsentry_load",
            "Committed detector work of the open calls, as a share of the server's throughput",
            registry=r,
        )
        self.detector_cache = Counter(
            "avsentry_detector_cache", "Detector cache lookups and evictions", ["event"], registry=r
        )
        self.detectors = Gauge("avsentry_detectors", "Detectors built (defence configurations)", registry=r)
        self.dropped = Counter(
            "avsentry_windows_dropped", "Windows of ended calls dropped before judging", registry=r
        )

    def serve(self, port: int, address: str) -> int:
        """Start the HTTP exposition thread; returns the bound port."""
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        return int(server.server_port)

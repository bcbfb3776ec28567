"""The models a server guards, their recognizers, and one shared detector per configuration."""

from __future__ import annotations

import threading

from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.pipelines.recognizers import Manifest, SmoothableRecognizer, load_recognizer, read_manifest
from avsentry.stream.errors import InvalidRequest


class ModelRegistry:
    """Loads manifests at start-up and recognizers/detectors on first use (then cached).

    Args:
        default: Embedded model name or manifest path served when a request names no model.
        extra: More manifests to serve.
        backend: ``"torch"`` or ``"onnx"``.
        device: ``"cpu"``, ``"cuda[:N]"`` or ``"auto"``.
    """

    def __init__(self, default: str, extra: tuple[str, ...] = (), *, backend: str, device: str) -> None:
        self.backend = backend
        self.device = device
        self.manifests: dict[str, Manifest] = {}
        self._refs: dict[str, str] = {}
        for ref in (default, *extra):
            m = read_manifest(ref)
            self.manifests[m.spec.name] = m
            self._refs[m.spec.name] = ref
        self.default = read_manifest(default).spec.name
        self._recognizers: dict[str, SmoothableRecognizer] = {}
        self._detectors: dict[tuple, Detector] = {}
        self._lock = threading.Lock()

    def manifest(self, name: str) -> Manifest:
        name = name or self.default
        if name not in self.manifests:
            raise InvalidRequest(f"unknown model {name!r}; this server has: {', '.join(self.manifests)}")
        return self.manifests[name]

    def recognizer(self, name: str) -> SmoothableRecognizer:
        with self._lock:
            if name not in self._recognizers:
                self._recognizers[name] = load_recognizer(
                    self._refs[name], backend=self.backend, device=self.device
                )
            return self._recognizers[name]

    def detector(self, name: str, config: DetectorConfig) -> Detector:
        """The shared detector for ``(model, config)``: windows of all streams that use the same
        configuration are batched together."""
        key = (name, repr(config))
        with self._lock:
            found = self._detectors.get(key)
        if found is not None:
            return found
        det = Detector(self.recognizer(name), config)
        with self._lock:
            return self._detectors.setdefault(key, det)

    def warm_up(self) -> None:
        """Load the default model and run one window through its default detector."""
        import numpy as np

        m = self.manifests[self.default]
        cfg, _ = DetectorConfig.from_card(m.extra.get("detector"))
        self.detector(self.default, cfg).analyze(np.zeros((1, m.spec.window_samples), np.float32))

"""avsentry: guard voice and video recognizers against adversarial examples.

One installed namespace:

- :mod:`avsentry.pipelines`: the pure defence core (recognizers, transforms, smoothing,
  detection, stream sessions); usable as a library without a server.
- :mod:`avsentry.stream`: the edges (gRPC service, batching, client SDK, audio sources).
- :mod:`avsentry.tools`: offline work (data synthesis, training, calibration, attacks,
  benchmarks).
- :mod:`avsentry.cli`: the ``avsentry`` command line, the one module that sees both
  ``stream`` and ``tools``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("avsentry")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]

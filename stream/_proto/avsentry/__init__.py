"""Generated gRPC stubs (python -m avsentry.stream.protogen)."""

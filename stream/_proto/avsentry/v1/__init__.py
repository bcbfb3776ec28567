"""Generated gRPC stubs (python -m stream.protogen)."""

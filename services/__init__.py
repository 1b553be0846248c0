"""Kiln's gRPC services and the runtime they share."""

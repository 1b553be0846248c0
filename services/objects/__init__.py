"""The objects service: CLyman objects, scenes, and the assets (files in S3) they reference."""

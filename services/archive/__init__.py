"""The archive service: asset archives (Scenario), built as jobs."""

"""Kiln's benchmarks: each script measures one figure against a reference run side by side."""

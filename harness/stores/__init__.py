"""Store servers the harness starts and owns for a run."""

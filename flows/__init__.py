"""Prefect flows: ``generate`` (one attempt of one job), and the executor that runs them in-process."""

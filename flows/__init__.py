"""Prefect flows: ``generate`` (one attempt of one job), and the executor that runs them in-process; ``batch``
and ``pipeline`` (the run plane of batches and pipeline runs, ``pipelines.py``); example pipelines (``hero.py``,
``expressions.py``)."""

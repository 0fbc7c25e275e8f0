"""Reading a Prometheus text exposition in tests: ``Samples`` maps (name, labels) to values."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


class Samples(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """Every sample of one scrape."""

    @classmethod
    def parse(cls, text: str) -> Samples:
        out = cls()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def get1(self, name: str, **labels: str) -> float:
        """The value of exactly one series; 0 when it does not exist."""
        return self.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.items() if n == name and want <= lab)

    def names(self) -> set[str]:
        return {n for n, _ in self}


async def scrape(http: aiohttp.ClientSession, base: str, **kw: Any) -> Samples:
    async with http.get(f"{base}/metrics", **kw) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return Samples.parse(await r.text())

"""What a contact sheet costs the API process, against the floor of decoding and scaling the same images.

    .venv/bin/python benchmarks/bench_grid.py [--side 20] [--image 512] [--cell 96]

A side x side sweep of finished items, each a PNG of image x image pixels with noise (so it does not compress to
nothing), held in memory (no storage or Redis latency: the drawing alone). Scenarios, each timed in the same run:

  floor    baseline: a bare loop that decodes every PNG and scales it to the cell with Pillow
  cold     ContactSheets.png with empty caches: read, decode, scale, compose, encode
  changed  one item changed (a new ETag): thumbnails cached, the sheet composed and encoded again
  cached   the same ETag again: the PNG from the cache (what If-None-Match spares even this)

For each: wall seconds and CPU seconds of the process; ratios to the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from comfyflow.core.sheet_layout import sweep_sheet
from comfyflow.core.sheets import ContactSheets, Plan
from comfyflow.models import Artifact, Job, JobResult, JobState


def png(size: int, seed: int) -> bytes:
    img = Image.effect_noise((size, size), 40 + seed % 50).convert("RGB")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


class MemoryStorage:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    async def info(self, key: str) -> Any:
        return SimpleNamespace(size=len(self.blobs[key]))

    async def get(self, key: str) -> bytes:
        return self.blobs[key]


def job(index: int) -> Job:
    art = Artifact(index=0, key=f"jobs/{index}/0.png", content_type="image/png", size=1, sha256="0")
    return Job(job_id=f"{index:032x}", status=JobState.SUCCEEDED, request={}, result=JobResult(artifacts=[art]),
               created_at=datetime.now(UTC))


def timed(fn: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), os.times()
    fn()
    after = os.times()
    return time.perf_counter() - wall, (after.user + after.system) - (cpu.user + cpu.system)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=20)
    parser.add_argument("--image", type=int, default=512)
    parser.add_argument("--cell", type=int, default=96)
    args = parser.parse_args()
    n = args.side * args.side
    blobs = {f"jobs/{i}/0.png": png(args.image, i) for i in range(n)}
    sweep = {"seed": list(range(args.side)), "cfg_scale": list(range(args.side))}
    sheet = sweep_sheet(sweep, name="bench")
    jobs = {i: job(i) for i in range(n)}
    sheets = ContactSheets(SimpleNamespace(), MemoryStorage(blobs))  # type: ignore[arg-type]

    def floor() -> None:
        for data in blobs.values():
            with Image.open(io.BytesIO(data)) as img:
                img.thumbnail((args.cell, args.cell))

    def run(plan: Plan) -> None:
        asyncio.run(sheets.png(plan))

    results = {"floor": timed(floor)}
    results["cold"] = timed(lambda: run(Plan(sheet, args.cell, '"a"', jobs)))
    results["changed"] = timed(lambda: run(Plan(sheet, args.cell, '"b"', jobs)))
    results["cached"] = timed(lambda: run(Plan(sheet, args.cell, '"b"', jobs)))
    geo = sheet.geometry(args.cell)
    print(f"{n} cells of {args.image}x{args.image} PNGs -> {geo['width']}x{geo['height']} sheet (cell {args.cell})")
    base_wall, base_cpu = results["floor"]
    for name, (wall, cpu) in results.items():
        print(f"  {name:8s} wall {wall:7.3f} s  cpu {cpu:7.3f} s   x floor: wall {wall / base_wall:5.2f}  "
              f"cpu {cpu / max(base_cpu, 1e-9):5.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

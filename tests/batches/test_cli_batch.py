"""``comfyflow batch submit sweep.yaml --watch`` against a live API."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

SWEEP = """\
name: cli-sweep
priority: low
base: {prompt: "a red fox", steps: 1, width: 64, height: 64}
sweep:
  seed: [1, 2, 3]
  cfg_scale: [5, 7]
"""


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": "120"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfyflow.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_submit_a_sweep_and_watch_it(api_factory, http, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory()
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    code, out, err = await run_cli("batch", "submit", str(tmp_path / "sweep.yaml"), "--watch", "--url", base)
    assert code == 0, err
    batch_id = out.strip()
    assert "6 items queued" in err and f"batch {batch_id} succeeded" in err and '"succeeded": 6' in err
    async with http.get(f"{base}/api/v1/batches/{batch_id}") as r:
        batch = await r.json()
    assert batch["name"] == "cli-sweep" and batch["priority"] == "low" and batch["counts"]["succeeded"] == 6


async def test_invalid_file_names_the_item(api_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    (tmp_path / "bad.yaml").write_text("items:\n  - {prompt: ok}\n  - {prompt: bad, steps: 0}\n")
    code, out, err = await run_cli("batch", "submit", str(tmp_path / "bad.yaml"), "--url", base)
    assert code == 1 and out == ""
    assert "VALIDATION_ERROR" in err and "items.1.steps" in err


async def test_save_the_contact_sheet(api_factory, http, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import io

    from PIL import Image

    base = await api_factory()
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    code, out, err = await run_cli("batch", "submit", str(tmp_path / "sweep.yaml"), "--watch", "--url", base)
    assert code == 0, err
    batch_id = out.strip()
    sheet = tmp_path / "sheet.png"
    code, out, err = await run_cli("batch", "grid", batch_id, "-o", str(sheet), "--cell", "32", "--url", base)
    assert code == 0, err
    assert f"saved to {sheet}" in err
    async with http.get(f"{base}/api/v1/batches/{batch_id}/grid?cell=32") as r:
        assert sheet.read_bytes() == await r.read()  # the very sheet the API serves
    with Image.open(io.BytesIO(sheet.read_bytes())) as img:
        assert img.format == "PNG" and img.width > 3 * 32 and img.height > 2 * 32
    code, out, err = await run_cli("batch", "grid", batch_id, "-o", str(tmp_path / "x.png"), "--x", "nope",
                                   "--url", base)  # fmt: skip
    assert code == 1 and "VALIDATION_ERROR" in err and "seed" in err and not (tmp_path / "x.png").exists()

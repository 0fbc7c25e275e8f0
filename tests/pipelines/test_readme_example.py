"""The README's smallest complete Python program (section "From Python") runs as printed, on the embedded
defaults, prints the artifacts of every step, and leaves no process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from comfyflow.testing.processes import home_processes

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text()
    found = re.search(r"<!-- tested by tests/pipelines/test_readme_example.py -->\n```python\n(.*?)```", text, re.S)
    assert found, "the README's tested example is missing"
    return found.group(1)


def test_the_readme_python_example_runs_a_pipeline_and_prints_its_artifacts(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_example())
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYFLOW_", "PREFECT_"))}
    env.update({"COMFYFLOW_HOME": str(home), "COMFYFLOW_LOG_LEVEL": "WARNING"})
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=110)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "succeeded", proc.stdout
    steps = [line.split(" ", 1) for line in lines[1:]]
    assert sorted(s for s, _ in steps) == ["hero", "upscale-0", "upscale-1", "variation-0", "variation-1"]
    for _, url in steps:
        assert url.startswith("file://") and Path(url.removeprefix("file://")).is_file(), url
    assert home_processes(home) == {}, "the embedded Redis it started stopped with it"

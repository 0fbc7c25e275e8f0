import copy
import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
CHECKPOINTS = ["sd15-fake.safetensors", "dreamshaper_8.safetensors"]


@pytest.fixture
def object_info():
    """Real ComfyUI 0.8.0 /object_info entries (trimmed capture), with two checkpoints installed."""
    info = json.loads((DATA / "object_info.json").read_text())
    info = copy.deepcopy(info)
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = list(CHECKPOINTS)
    return info

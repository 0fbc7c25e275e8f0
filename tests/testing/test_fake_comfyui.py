"""The fake ComfyUI server against the behaviour captured from a real ComfyUI 0.8.0 (PROTOCOL.md).

Every expectation is embedded here. When the raw captures exist (``/work/shared/comfyui/captures``, not in
CI), extra tests replay their requests against the fake and compare frame sequences and bodies 1:1.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from PIL import Image

from comfyflow.testing.fake_comfyui import TEXT_500, FakeComfyUI, Faults

# Copies (gzipped) of the raw captures of a real ComfyUI 0.8.0 server (shared/comfyui/captures).
CAPTURES = Path(__file__).parent / "captures"

# --- expected frame type sequences (PROTOCOL.md section 2) ------------------------------------------------
SEQ_SUCCESS = [  # 2.1 EmptyImage -> ImageInvert -> SaveImage
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "progress_state",
    "executing",
    "progress_state",
    "progress_state",
    "executing",
    "progress_state",
    "progress_state",
    "executing",
    "executed",
    "progress_state",
    "execution_success",
    "status",
    "executing",
]
SEQ_CACHED = [  # 2.2 identical re-run with client_id
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "executed",
    "progress_state",
    "execution_success",
    "status",
    "executing",
]
SEQ_CACHED_NO_CLIENT = ["status", "status", "progress_state", "status"]  # 2.2 same re-run without client_id
SEQ_ERROR = [  # 2.4 LoadImage of a file that is not an image
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "progress_state",
    "executing",
    "execution_error",
    "status",
    "executing",
]
#: 2.1 progress_state node maps, one tuple per frame: (node, state, value, max) for every listed node.
PS_SUCCESS = [
    [("1", "running", 0.0, 1.0)],
    [("1", "finished", 1.0, 1.0)],
    [("1", "finished", 1.0, 1.0), ("2", "running", 0.0, 1.0)],
    [("1", "finished", 1.0, 1.0), ("2", "finished", 1.0, 1.0)],
    [("1", "finished", 1.0, 1.0), ("2", "finished", 1.0, 1.0), ("3", "running", 0.0, 1.0)],
    [("1", "finished", 1.0, 1.0), ("2", "finished", 1.0, 1.0), ("3", "finished", 1.0, 1.0)],
]
ERROR_KEYS = [
    "prompt_id",
    "node_id",
    "node_type",
    "executed",
    "exception_message",
    "exception_type",
    "traceback",
    "current_inputs",
    "current_outputs",
    "timestamp",
]
PS_ENTRY_KEYS = {
    "value",
    "max",
    "state",
    "node_id",
    "prompt_id",
    "display_node_id",
    "parent_node_id",
    "real_node_id",
}


def invert_graph(color: int = 1234, prefix: str = "orch", width: int = 64, batch: int = 1) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": 64, "batch_size": batch, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def txt2img_graph(
    seed: int = 1,
    steps: int = 4,
    text: str = "a cat",
    width: int = 96,
    height: int = 64,
    batch: int = 1,
    prefix: str = "t2i",
    ckpt: str = "sd15-fake.safetensors",
) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": batch},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


# --- helpers -------------------------------------------------------------------------------------------
@pytest.fixture
async def fake(tmp_path: Path):
    async with FakeComfyUI(workdir=tmp_path) as server:
        yield server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(http: aiohttp.ClientSession, fake: FakeComfyUI, client_id: str | None = None) -> Any:
    url = fake.url + "/ws" + (f"?clientId={client_id}" if client_id else "")
    ws = await http.ws_connect(url)
    first = await ws.receive_json(timeout=2)
    assert first["type"] == "status" and "sid" in first["data"]
    return ws


async def post(http: aiohttp.ClientSession, fake: FakeComfyUI, graph: Any, **body: Any) -> tuple[int, Any]:
    async with http.post(fake.url + "/prompt", json={"prompt": graph, **body}) as resp:
        return resp.status, await resp.json()


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, url
        return await resp.json()


async def until_done(ws: Any, prompt_id: str, limit: float = 5.0) -> list[dict[str, Any]]:
    """Frames up to and including ``executing {node: null, prompt_id}``."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(limit):
        while True:
            msg = await ws.receive()
            assert msg.type == WSMsgType.TEXT, f"socket ended: {msg}"
            frame = json.loads(msg.data)
            frames.append(frame)
            data = frame["data"]
            if (
                frame["type"] == "executing"
                and data.get("node") is None
                and data.get("prompt_id") == prompt_id
            ):
                return frames


async def drain(ws: Any, quiet: float = 0.15) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        try:
            msg = await ws.receive(timeout=quiet)
        except TimeoutError:
            return frames
        if msg.type != WSMsgType.TEXT:
            return frames
        frames.append(json.loads(msg.data))


async def wait_history(http: aiohttp.ClientSession, fake: FakeComfyUI, prompt_id: str) -> Any:
    async with asyncio.timeout(5):
        while True:
            entry = await get_json(http, f"{fake.url}/history/{prompt_id}")
            if entry:
                return entry[prompt_id]
            await asyncio.sleep(0.01)


async def wait_running(http: aiohttp.ClientSession, fake: FakeComfyUI, prompt_id: str) -> None:
    async with asyncio.timeout(5):
        while True:
            queue = await get_json(http, fake.url + "/queue")
            if [item[1] for item in queue["queue_running"]] == [prompt_id]:
                return
            await asyncio.sleep(0.01)


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


def ps_maps(frames: list[dict[str, Any]]) -> list[list[tuple[str, str, Any, Any]]]:
    return [
        [(k, v["state"], v["value"], v["max"]) for k, v in f["data"]["nodes"].items()]
        for f in frames
        if f["type"] == "progress_state"
    ]


def load_capture(name: str) -> Any:
    return json.loads(gzip.decompress((CAPTURES / f"{name}.gz").read_bytes()))


async def upload(
    http: aiohttp.ClientSession, fake: FakeComfyUI, name: str, data: bytes, **fields: str
) -> Any:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name)
    for key, value in fields.items():
        form.add_field(key, value)
    async with http.post(fake.url + "/upload/image", data=form) as resp:
        return resp.status, (await resp.json() if resp.status == 200 else await resp.text())


def png_bytes(size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# --- 2.1 success, 3.1 history ----------------------------------------------------------------------------
async def test_success_frames_history_and_png(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    ws = await connect(http, fake, "orch-1")
    observer = await connect(http, fake, "observer-1")
    anonymous = await connect(http, fake)
    extra = {
        "extra_pnginfo": {"workflow": {"note": "orchestrator"}},
        "custom_key": 1,
        "api_key_comfy_org": "x",
    }
    status, body = await post(
        http, fake, invert_graph(), client_id="orch-1", prompt_id="my-own-id", extra_data=extra
    )
    assert (status, body) == (200, {"prompt_id": "my-own-id", "number": 0, "node_errors": {}})

    frames = await until_done(ws, "my-own-id")
    # History is written before the final `executing {node: null}` frame goes out.
    history = await get_json(http, f"{fake.url}/history/my-own-id")
    assert types(frames) == SEQ_SUCCESS
    assert ps_maps(frames) == PS_SUCCESS
    for f in frames:
        if f["type"] == "progress_state":
            assert all(set(entry) == PS_ENTRY_KEYS for entry in f["data"]["nodes"].values())
    assert [f["data"]["status"]["exec_info"]["queue_remaining"] for f in frames if f["type"] == "status"] == [
        1,
        1,
        0,
    ]
    assert frames[5]["data"] == {"node": "1", "display_node": "1", "prompt_id": "my-own-id"}
    image = {"filename": "orch_00001_.png", "subfolder": "", "type": "output"}
    assert frames[12]["data"] == {
        "node": "3",
        "display_node": "3",
        "output": {"images": [image]},
        "prompt_id": "my-own-id",
    }
    assert set(frames[2]["data"]) == {"prompt_id", "timestamp"}
    assert frames[-1] == {"type": "executing", "data": {"node": None, "prompt_id": "my-own-id"}}
    # Observers (other clientId, or none) only see the status broadcasts.
    assert types(await drain(observer)) == ["status", "status", "status"]
    assert types(await drain(anonymous)) == ["status", "status", "status"]

    entry = history["my-own-id"]
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    number, prompt_id, graph, extra_data, outputs = entry["prompt"]
    assert (number, prompt_id, graph, outputs) == (0, "my-own-id", invert_graph(), ["3"])
    assert set(extra_data) == {
        "extra_pnginfo",
        "custom_key",
        "client_id",
        "create_time",
    }  # sensitive key dropped
    assert entry["outputs"] == {"3": {"images": [image]}}
    assert entry["meta"] == {
        "3": {"node_id": "3", "display_node": "3", "parent_node": None, "real_node_id": "3"}
    }
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]

    with Image.open(fake.workdir / "output" / "orch_00001_.png") as img:
        assert img.size == (64, 64)
        assert img.getpixel((5, 5)) == (255, 251, 45)  # inverse of color 1234 = (0, 4, 210)
        assert json.loads(img.info["prompt"]) == invert_graph()
        assert json.loads(img.info["workflow"]) == {"note": "orchestrator"}
    assert fake.prompts_posted == {"my-own-id": 1}
    assert any(e["path"] == "/prompt" and e.get("prompt_id") == "my-own-id" for e in fake.log)


# --- 2.2 cache -------------------------------------------------------------------------------------------
async def test_cached_rerun_with_and_without_client_id(
    fake: FakeComfyUI, http: aiohttp.ClientSession
) -> None:
    ws = await connect(http, fake, "c1")
    _, first = await post(http, fake, invert_graph(), client_id="c1")
    await until_done(ws, first["prompt_id"])

    _, again = await post(http, fake, invert_graph(), client_id="c1")
    frames = await until_done(ws, again["prompt_id"])
    assert types(frames) == SEQ_CACHED
    assert frames[3]["data"]["nodes"] == ["1", "2", "3"]
    assert frames[4]["data"]["output"]["images"][0]["filename"] == "orch_00001_.png"  # the old file
    assert ps_maps(frames) == [[("3", "finished", 1, 1)]]
    assert isinstance(frames[5]["data"]["nodes"]["3"]["value"], int)
    assert sorted(os.listdir(fake.workdir / "output")) == ["orch_00001_.png"]  # nothing new written
    entry = await wait_history(http, fake, again["prompt_id"])
    assert entry["outputs"]["3"]["images"][0]["filename"] == "orch_00001_.png"

    # The same re-run without client_id: everyone gets status/progress_state only; history outputs are empty.
    _, quiet = await post(http, fake, invert_graph())
    entry = await wait_history(http, fake, quiet["prompt_id"])
    assert types(await drain(ws)) == SEQ_CACHED_NO_CLIENT
    assert entry["outputs"] == {} and entry["meta"] == {}
    assert entry["status"]["messages"][1][1]["nodes"] == ["1", "2", "3"]

    # A, B, A: only the previous prompt's outputs are cached, so A is recomputed.
    for graph in (invert_graph(color=99), invert_graph()):
        _, run = await post(http, fake, graph, client_id="c1")
        frames = await until_done(ws, run["prompt_id"])
        assert frames[3]["data"]["nodes"] == []
    assert sorted(os.listdir(fake.workdir / "output"))[-1] == "orch_00003_.png"


async def test_partial_cache_replays_cached_output_first(
    fake: FakeComfyUI, http: aiohttp.ClientSession
) -> None:
    ws = await connect(http, fake, "c1")
    two: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 255},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "two"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    _, run = await post(http, fake, two, client_id="c1")
    frames = await until_done(ws, run["prompt_id"])
    assert [f["data"]["node"] for f in frames if f["type"] == "executing"] == ["1", "2", "3", "4", None]
    preview = [f for f in frames if f["type"] == "executed"][1]["data"]["output"]["images"][0]
    assert (
        re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", preview["filename"]) and preview["type"] == "temp"
    )

    two["2"]["inputs"]["filename_prefix"] = "two_b"
    _, run = await post(http, fake, two, client_id="c1")
    frames = await until_done(ws, run["prompt_id"])
    assert types(frames)[3:8] == [
        "execution_cached",
        "executed",
        "progress_state",
        "progress_state",
        "executing",
    ]
    assert frames[3]["data"]["nodes"] == ["1", "3", "4"]
    assert frames[4]["data"]["node"] == "4" and frames[4]["data"]["output"]["images"] == [preview]
    entry = await wait_history(http, fake, run["prompt_id"])
    assert entry["prompt"][4] == ["4", "2"] and list(entry["outputs"]) == ["4", "2"]


# --- 1.2 validation --------------------------------------------------------------------------------------
def _failed(
    node: str, class_type: str, error: dict[str, Any], dependent: str = "3", details: str = ""
) -> Any:
    return {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": details,
            "extra_info": {},
        },
        "node_errors": {
            node: {"errors": [error], "dependent_outputs": [dependent], "class_type": class_type}
        },
    }


def _invalid(type_: str, message: str, details: str = "") -> Any:
    return {
        "error": {"type": type_, "message": message, "details": details, "extra_info": {}},
        "node_errors": {},
    }


WIDTH_CONFIG = ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}]
IMAGES_CONFIG = ["IMAGE", {"tooltip": "The images to save."}]


def _case(mutate: Any) -> dict[str, Any]:
    graph = invert_graph()
    mutate(graph)
    return graph


VALIDATION_CASES: dict[str, tuple[Any, Any]] = {
    "unknown_class": (
        _case(lambda g: g["2"].update(class_type="NoSuchNode")),
        _invalid("invalid_prompt", "Cannot execute because node NoSuchNode does not exist.", "Node ID '#2'"),
    ),
    "missing_class_type": (
        _case(lambda g: g["2"].pop("class_type")),
        _invalid(
            "invalid_prompt",
            "Cannot execute because a node is missing the class_type property.",
            "Node ID '#2'",
        ),
    ),
    "node_not_a_dict": (
        _case(lambda g: g.update({"2": "oops"})),
        _invalid(
            "invalid_prompt",
            "Cannot execute because a node is missing the class_type property.",
            "Node ID '#2'",
        ),
    ),
    "no_output_node": (_case(lambda g: g.pop("3")), _invalid("prompt_no_outputs", "Prompt has no outputs")),
    "empty_prompt": ({}, _invalid("prompt_no_outputs", "Prompt has no outputs")),
    "missing_required_input": (
        _case(lambda g: g["1"]["inputs"].pop("width")),
        _failed(
            "1",
            "EmptyImage",
            {
                "type": "required_input_missing",
                "message": "Required input is missing",
                "details": "width",
                "extra_info": {"input_name": "width"},
            },
        ),
    ),
    "missing_required_link_input": (
        _case(lambda g: g["2"]["inputs"].pop("image")),
        _failed(
            "2",
            "ImageInvert",
            {
                "type": "required_input_missing",
                "message": "Required input is missing",
                "details": "image",
                "extra_info": {"input_name": "image"},
            },
        ),
    ),
    "wrong_value_type": (
        _case(lambda g: g["1"]["inputs"].update(width="abc")),
        _failed(
            "1",
            "EmptyImage",
            {
                "type": "invalid_input_type",
                "message": "Failed to convert an input value to a INT value",
                "details": "width, abc, invalid literal for int() with base 10: 'abc'",
                "extra_info": {
                    "input_name": "width",
                    "input_config": WIDTH_CONFIG,
                    "received_value": "abc",
                    "exception_message": "invalid literal for int() with base 10: 'abc'",
                },
            },
        ),
    ),
    "value_below_min": (
        _case(lambda g: g["1"]["inputs"].update(width=0)),
        _failed(
            "1",
            "EmptyImage",
            {
                "type": "value_smaller_than_min",
                "message": "Value 0 smaller than min of 1",
                "details": "width",
                "extra_info": {"input_name": "width", "input_config": WIDTH_CONFIG, "received_value": 0},
            },
        ),
    ),
    "value_above_max": (
        _case(lambda g: g["1"]["inputs"].update(width=99999)),
        _failed(
            "1",
            "EmptyImage",
            {
                "type": "value_bigger_than_max",
                "message": "Value 99999 bigger than max of 16384",
                "details": "width",
                "extra_info": {"input_name": "width", "input_config": WIDTH_CONFIG, "received_value": 99999},
            },
        ),
    ),
    "combo_not_in_list": (
        _case(
            lambda g: g.update(
                {
                    "2": {
                        "class_type": "ImageScale",
                        "inputs": {
                            "image": ["1", 0],
                            "upscale_method": "magic",
                            "width": 8,
                            "height": 8,
                            "crop": "disabled",
                        },
                    }
                }
            )
        ),
        _failed(
            "2",
            "ImageScale",
            {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": "upscale_method: 'magic' not in "
                "['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']",
                "extra_info": {
                    "input_name": "upscale_method",
                    "received_value": "magic",
                    "input_config": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}],
                },
            },
        ),
    ),
    "v3_combo_not_in_list": (
        _case(
            lambda g: g.update(
                {
                    "4": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "nope.pth"}},
                    "2": {
                        "class_type": "ImageUpscaleWithModel",
                        "inputs": {"upscale_model": ["4", 0], "image": ["1", 0]},
                    },
                }
            )
        ),
        _failed(
            "4",
            "UpscaleModelLoader",
            {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": "model_name: 'nope.pth' not in ['slow-random-esrgan-x2.safetensors', "
                "'tiny-random-esrgan-x2.safetensors']",
                "extra_info": {
                    "input_name": "model_name",
                    "received_value": "nope.pth",
                    "input_config": [
                        "COMBO",
                        {
                            "multiselect": False,
                            "options": [
                                "slow-random-esrgan-x2.safetensors",
                                "tiny-random-esrgan-x2.safetensors",
                            ],
                        },
                    ],
                },
            },
        ),
    ),
    "loadimage_missing_file": (
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "does-not-exist.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        },
        _failed(
            "1",
            "LoadImage",
            {
                "type": "custom_validation_failed",
                "message": "Custom validation failed for node",
                "details": "image - Invalid image file: does-not-exist.png",
                "extra_info": {"input_name": "image"},
            },
            dependent="2",
        ),
    ),
    "wrong_link_type": (
        _case(lambda g: g.update({"2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}}})),
        _failed(
            "3",
            "SaveImage",
            {
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": "images, received_type(INT) mismatch input_type(IMAGE)",
                "extra_info": {
                    "input_name": "images",
                    "input_config": IMAGES_CONFIG,
                    "received_type": "INT",
                    "linked_node": ["2", 0],
                },
            },
            details="Return type mismatch between linked nodes: "
            "images, received_type(INT) mismatch input_type(IMAGE)",
        ),
    ),
    "link_to_missing_node": (
        _case(lambda g: g["2"]["inputs"].update(image=["99", 0])),
        _failed(
            "2",
            "ImageInvert",
            {
                "type": "exception_during_inner_validation",
                "message": "Exception when validating inner node",
                "details": "'99'",
                "extra_info": {
                    "input_name": "images",
                    "input_config": IMAGES_CONFIG,
                    "exception_message": "'99'",
                    "exception_type": "KeyError",
                    "traceback": "<tb>",
                    "linked_node": ["2", 0],
                },
            },
        ),
    ),
    "link_output_index_out_of_range": (
        _case(lambda g: g["2"]["inputs"].update(image=["1", 5])),
        _failed(
            "2",
            "ImageInvert",
            {
                "type": "exception_during_inner_validation",
                "message": "Exception when validating inner node",
                "details": "tuple index out of range",
                "extra_info": {
                    "input_name": "images",
                    "input_config": IMAGES_CONFIG,
                    "exception_message": "tuple index out of range",
                    "exception_type": "IndexError",
                    "traceback": "<tb>",
                    "linked_node": ["2", 0],
                },
            },
        ),
    ),
}


def _scrub_tracebacks(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: "<tb>" if k == "traceback" else _scrub_tracebacks(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub_tracebacks(v) for v in obj]
    return obj


@pytest.mark.parametrize("case", list(VALIDATION_CASES))
async def test_validation_errors(fake: FakeComfyUI, http: aiohttp.ClientSession, case: str) -> None:
    graph, expected = VALIDATION_CASES[case]
    status, body = await post(http, fake, graph, client_id="c1")
    assert status == 400
    assert _scrub_tracebacks(body) == expected
    if "traceback" in json.dumps(body):
        tb = next(iter(body["node_errors"].values()))["errors"][0]["extra_info"]["traceback"]
        assert isinstance(tb, list) and all(isinstance(line, str) for line in tb)
    # Nothing was queued and nothing ran; the number counter still moved on.
    assert (await get_json(http, fake.url + "/queue")) == {"queue_running": [], "queue_pending": []}
    assert fake.prompts_posted == {}
    _, ok = await post(http, fake, invert_graph())
    assert ok["number"] == 1


async def test_no_prompt_key_conversion_and_500s(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    async with http.post(fake.url + "/prompt", json={"client_id": "x"}) as resp:
        assert resp.status == 400
        expected = _invalid("no_prompt", "No prompt provided", "No prompt provided")
        assert await resp.json() == expected
    for raw in ("{not json", "", json.dumps({"prompt": [1, 2]})):
        async with http.post(fake.url + "/prompt", data=raw) as resp:
            assert resp.status == 500 and await resp.text() == TEXT_500
            assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert resp.headers["Connection"] == "close"
    async with http.post(fake.url + "/queue", data="not json") as resp:
        assert resp.status == 500 and await resp.text() == TEXT_500
    async with http.post(fake.url + "/free") as resp:
        assert resp.status == 500
    # Type coercion: "64" and 64.7 are accepted and written back as ints.
    graph = invert_graph()
    graph["1"]["inputs"]["width"] = "64"
    graph["1"]["inputs"]["height"] = 64.7
    status, body = await post(http, fake, graph, number=5.5)
    assert status == 200 and body["number"] == 5.5
    entry = await wait_history(http, fake, body["prompt_id"])
    assert entry["prompt"][2]["1"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1, "color": 1234}
    _, body = await post(http, fake, invert_graph(color=1), front=True)
    assert body["number"] == -2  # counted: no-prompt 400, list-prompt 500; the explicit number was not


async def test_partial_validity_runs_only_valid_outputs(
    fake: FakeComfyUI, http: aiohttp.ClientSession
) -> None:
    graph = invert_graph()
    graph["4"] = {"class_type": "ImageInvert", "inputs": {}}
    graph["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "bad"}}
    status, body = await post(http, fake, graph, client_id="c1")
    assert status == 200
    assert body["node_errors"] == {
        "4": {
            "errors": [
                {
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": "image",
                    "extra_info": {"input_name": "image"},
                }
            ],
            "dependent_outputs": ["5"],
            "class_type": "ImageInvert",
        }
    }
    entry = await wait_history(http, fake, body["prompt_id"])
    assert entry["prompt"][4] == ["3"] and list(entry["outputs"]) == ["3"]


# --- 4.3 queue ---------------------------------------------------------------------------------------------
async def test_queue_heap_order_delete_clear(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    observer = await connect(http, fake, "observer")
    fake.faults.hang = True
    _, long = await post(http, fake, invert_graph(color=7), client_id="c1")
    await wait_running(http, fake, long["prompt_id"])
    ids: dict[str, tuple[float, str]] = {}
    for name, extra in (("q1", {}), ("q2", {"front": True}), ("q3", {"number": 5.5}), ("q4", {})):
        _, body = await post(http, fake, invert_graph(color=len(ids) + 20), client_id="c1", **extra)
        ids[name] = (body["number"], body["prompt_id"])
    assert [n for n, _ in ids.values()] == [1, -2, 5.5, 3]
    heap: list[float] = []
    for number, _ in ids.values():
        heapq.heappush(heap, number)
    queue = await get_json(http, fake.url + "/queue")
    assert (
        [item[0] for item in queue["queue_pending"]] == heap == [-2, 1, 5.5, 3]
    )  # heap order, not run order
    assert all(len(item) == 5 for item in queue["queue_pending"] + queue["queue_running"])
    assert queue["queue_running"][0][:2] == [0, long["prompt_id"]]
    assert set(queue["queue_running"][0][3]) == {"client_id", "create_time"}
    assert await get_json(http, fake.url + "/prompt") == {"exec_info": {"queue_remaining": 5}}
    assert fake.max_in_flight == 5

    # Interrupting a queued (not running) prompt does nothing.
    async with http.post(fake.url + "/interrupt", json={"prompt_id": ids["q1"][1]}) as resp:
        assert resp.status == 200 and await resp.text() == ""
    assert fake.interrupts == [ids["q1"][1]] and not fake.interrupt_flag
    await drain(observer, 0.05)

    async with http.post(fake.url + "/queue", json={"delete": [ids["q2"][1]]}) as resp:
        assert resp.status == 200 and await resp.text() == ""
    async with http.post(fake.url + "/queue", json={"delete": ["no-such-id"]}) as resp:
        assert resp.status == 200
    pending = (await get_json(http, fake.url + "/queue"))["queue_pending"]
    assert sorted(item[0] for item in pending) == [1, 3, 5.5]
    async with http.post(fake.url + "/queue", json={"clear": True}) as resp:
        assert resp.status == 200
    async with http.post(fake.url + "/queue", json={}) as resp:
        assert resp.status == 200
    queue = await get_json(http, fake.url + "/queue")
    assert queue["queue_pending"] == [] and len(queue["queue_running"]) == 1
    frames = await drain(observer, 0.1)
    assert [f["data"]["status"]["exec_info"]["queue_remaining"] for f in frames] == [4, 1]

    fake.faults.hang = False
    await wait_history(http, fake, long["prompt_id"])
    for _, prompt_id in ids.values():
        assert await get_json(http, f"{fake.url}/history/{prompt_id}") == {}


async def test_queue_runs_in_number_order(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    fake.faults.hang = True
    _, first = await post(http, fake, invert_graph(color=1))
    await wait_running(http, fake, first["prompt_id"])
    posted = [
        (await post(http, fake, invert_graph(color=c), **extra))[1]["prompt_id"]
        for c, extra in ((2, {}), (3, {"front": True}), (4, {"number": 1.5}))
    ]
    fake.faults.hang = False
    await wait_history(http, fake, posted[2])
    history = await get_json(http, fake.url + "/history")
    assert list(history) == [first["prompt_id"], posted[1], posted[0], posted[2]]  # then -2, 1, 1.5


# --- 2.4 errors ---------------------------------------------------------------------------------------------
async def test_runtime_error_sequence(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    ws = await connect(http, fake, "c1")
    assert (await upload(http, fake, "broken.png", b"not an image"))[0] == 200
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "never"}},
    }
    _, body = await post(http, fake, graph, client_id="c1")
    frames = await until_done(ws, body["prompt_id"])
    assert types(frames) == SEQ_ERROR
    error = frames[6]["data"]
    assert list(error) == ERROR_KEYS
    assert (error["node_id"], error["node_type"], error["executed"]) == ("1", "LoadImage", [])
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    assert error["exception_message"].startswith("cannot identify image file") and error[
        "exception_message"
    ].endswith("\n")
    assert error["current_inputs"] == {"image": ["broken.png"]}
    assert sorted(error["current_outputs"]) == ["1", "2", "3"]
    assert isinstance(error["traceback"], list) and error["traceback"]
    entry = await wait_history(http, fake, body["prompt_id"])
    assert entry["outputs"] == {} and entry["meta"] == {}
    assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
    assert entry["status"]["messages"][-1][0] == "execution_error"


async def test_error_keeps_earlier_outputs_and_cache(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    """s04: an independent PreviewImage branch ran before the failing node; the next prompt reuses it."""
    ws = await connect(http, fake, "c1")
    fake.faults.fail_node_types = {"UpscaleModelLoader"}
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "UpscaleModelLoader",
            "inputs": {"model_name": "tiny-random-esrgan-x2.safetensors"},
        },
        "4": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["3", 0], "image": ["2", 0]},
        },
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "never"}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    _, body = await post(http, fake, graph, client_id="c1")
    frames = await until_done(ws, body["prompt_id"])
    assert [f["data"]["node"] for f in frames if f["type"] == "executing"] == ["1", "2", "6", "3", None]
    error = next(f["data"] for f in frames if f["type"] == "execution_error")
    assert (error["node_id"], error["executed"]) == ("3", ["1", "2", "6"])
    entry = await wait_history(http, fake, body["prompt_id"])
    assert entry["status"]["status_str"] == "error" and list(entry["outputs"]) == ["6"]
    assert entry["prompt"][4] == ["6", "5"]

    fake.faults.fail_node_types = set()
    rerun = {k: graph[k] for k in ("1", "2", "6")}
    _, body = await post(http, fake, rerun, client_id="c1")
    frames = await until_done(ws, body["prompt_id"])
    assert types(frames) == SEQ_CACHED and frames[3]["data"]["nodes"] == ["1", "2", "6"]


# --- 2.5 interrupt ---------------------------------------------------------------------------------------
async def test_interrupt_targeted_global_and_idle(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with FakeComfyUI(workdir=tmp_path, render_time=1.0) as fake:
        ws = await connect(http, fake, "c1")
        _, body = await post(http, fake, txt2img_graph(steps=20), client_id="c1")
        pid = body["prompt_id"]
        frames: list[dict[str, Any]] = []
        while sum(f["type"] == "progress" for f in frames) < 2:
            frames.append(await ws.receive_json(timeout=2))
        async with http.post(fake.url + "/interrupt", json={"prompt_id": "someone-else"}) as resp:
            assert resp.status == 200
        async with http.post(fake.url + "/interrupt", json={"prompt_id": pid}) as resp:
            assert resp.status == 200 and await resp.text() == ""
        t0 = time.monotonic()
        rest = await until_done(ws, pid)
        assert time.monotonic() - t0 < 0.5
        frames += rest
        assert types(frames)[:4] == ["status", "status", "execution_start", "execution_cached"]
        tail = types(rest)
        assert tail[-3:] == ["execution_interrupted", "status", "executing"]
        assert set(tail[:-3]) <= {"progress_state", "progress"}
        interrupted = rest[-3]["data"]
        assert list(interrupted) == ["prompt_id", "node_id", "node_type", "executed", "timestamp"]
        assert (interrupted["node_id"], interrupted["node_type"]) == ("3", "KSampler")
        assert interrupted["executed"] == ["4", "5", "7", "6"]
        last_state = {node: state for node, state, _, _ in ps_maps(frames)[-1]}
        assert last_state["3"] == "running"  # the interrupted node never reaches "finished"
        entry = await wait_history(http, fake, pid)
        assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert fake.interrupts == ["someone-else", pid]

        # Global interrupt (no body / not JSON) hits whatever runs.
        _, body = await post(http, fake, txt2img_graph(seed=2, steps=20), client_id="c1")
        await wait_running(http, fake, body["prompt_id"])
        async with http.post(fake.url + "/interrupt", data="not json") as resp:
            assert resp.status == 200
        frames = await until_done(ws, body["prompt_id"])
        assert "execution_interrupted" in types(frames)

        # An interrupt while idle does not affect the next prompt.
        async with http.post(fake.url + "/interrupt") as resp:
            assert resp.status == 200
        _, body = await post(http, fake, invert_graph(), client_id="c1")
        assert types(await until_done(ws, body["prompt_id"])) == SEQ_SUCCESS
        assert fake.interrupts == ["someone-else", pid, None, None]


# --- 2.6 reconnect, no client_id, feature flags ------------------------------------------------------------
async def test_reconnect_same_client_id(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with FakeComfyUI(workdir=tmp_path, render_time=0.6) as fake:
        old = await connect(http, fake, "c1")
        _, body = await post(http, fake, txt2img_graph(steps=6), client_id="c1")
        while (await old.receive_json(timeout=2))["type"] != "progress":
            pass
        new = await http.ws_connect(fake.url + "/ws?clientId=c1")
        assert await new.receive_json(timeout=1) == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 1}}, "sid": "c1"},
        }
        assert await new.receive_json(timeout=1) == {"type": "executing", "data": {"node": "3"}}
        rest = await until_done(new, body["prompt_id"])
        assert types(rest)[-3:] == ["execution_success", "status", "executing"]
        late = types(await drain(old, 0.05))  # at most frames already in flight when we reconnected
        assert "execution_success" not in late and "executing" not in late and not old.closed

        # ComfyUI unregisters by id when a socket closes: closing the old one silences the new one too.
        await old.close()
        await asyncio.sleep(0.05)
        await post(http, fake, invert_graph(), client_id="c1")
        assert await drain(new, 0.2) == []


async def test_no_client_id_broadcasts_progress_only(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    observer = await connect(http, fake, "observer")
    anonymous = await connect(http, fake)
    _, body = await post(http, fake, txt2img_graph(steps=3))
    await wait_history(http, fake, body["prompt_id"])
    for ws in (observer, anonymous):
        seen = types(await drain(ws))
        assert seen[:2] == ["status", "status"] and seen[-1] == "status"
        assert set(seen) == {"status", "progress_state", "progress"} and seen.count("progress") == 3


async def test_feature_flags_and_junk_frames(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    ws = await connect(http, fake, "ff")
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    assert await ws.receive_json(timeout=1) == {
        "type": "feature_flags",
        "data": {
            "supports_preview_metadata": True,
            "max_upload_size": 104857600,
            "extension": {"manager": {"supports_v4": True}},
        },
    }
    await ws.send_str("not json at all")
    await ws.send_json({"type": "feature_flags", "data": {}})  # only the first frame counts
    _, body = await post(http, fake, invert_graph(), client_id="ff")
    assert types(await until_done(ws, body["prompt_id"])) == SEQ_SUCCESS


# --- 4.1 view, 4.2 upload, 4.8 origin ----------------------------------------------------------------------
async def test_view(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 20, "height": 10, "batch_size": 1, "color": 1056816},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "view"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "viewsub/v"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    _, body = await post(http, fake, graph)
    outputs = (await wait_history(http, fake, body["prompt_id"]))["outputs"]
    assert list(outputs) == ["4", "3", "2"]
    assert outputs["3"]["images"][0] == {"filename": "v_00001_.png", "subfolder": "viewsub", "type": "output"}
    temp_name = outputs["4"]["images"][0]["filename"]
    size = (fake.workdir / "output" / "view_00001_.png").stat().st_size

    async def check(
        query: str, status: int, ctype: str | None = None, method: str = "GET", **headers: str
    ) -> Any:
        async with http.request(method, f"{fake.url}/view{query}", headers=headers) as resp:
            data = await resp.read()
            assert resp.status == status, query
            if ctype:
                assert resp.headers["Content-Type"] == ctype
            if status >= 400:
                assert data == b""
            return resp.headers, data

    headers, data = await check("?filename=view_00001_.png&subfolder=&type=output", 200, "image/png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == size
    assert headers["Content-Disposition"] == 'filename="view_00001_.png"'
    assert headers["Accept-Ranges"] == "bytes" and "Etag" in headers and "Last-Modified" in headers
    assert "Cache-Control" not in headers
    await check("?filename=view_00001_.png", 200, "image/png")
    await check("?filename=v_00001_.png&subfolder=viewsub&type=output", 200, "image/png")
    await check(f"?filename={temp_name}&subfolder=&type=temp", 200, "image/png")
    await check("?filename=view_00001_.png%20[output]", 200, "image/png")
    headers, data = await check("?filename=view_00001_.png&type=output", 206, Range="bytes=0-7")
    assert data == b"\x89PNG\r\n\x1a\n" and headers["Content-Range"] == f"bytes 0-7/{size}"
    headers, data = await check("?filename=view_00001_.png&type=output", 200, method="HEAD")
    assert data == b"" and int(headers["Content-Length"]) == size
    _, data = await check("?filename=view_00001_.png&type=output&preview=webp;50", 200, "image/webp")
    assert data[:4] == b"RIFF"
    _, data = await check("?filename=view_00001_.png&type=output&preview=jpeg;90", 200, "image/jpeg")
    assert data[:2] == b"\xff\xd8"
    await check("?filename=view_00001_.png&type=output&channel=rgb", 200, "image/png")
    await check("?filename=view_00001_.png&type=output&channel=a", 200, "image/png")
    await check("?filename=nope.png&type=output", 404)
    await check("", 404)
    await check("?filename=view_00001_.png&type=bogus", 400)
    await check("?filename=../x.png&type=output", 400)
    await check("?filename=view_00001_.png&type=output&subfolder=../../", 403)
    async with http.get(f"{fake.url}/api/view?filename=view_00001_.png&type=output") as resp:
        assert resp.status == 200


async def test_upload_dedupe_overwrite_subfolder(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    a, b = png_bytes(color=(1, 1, 1)), png_bytes(color=(2, 2, 2))
    name = "orch_upload.png"
    assert await upload(http, fake, name, a) == (200, {"name": name, "subfolder": "", "type": "input"})
    assert await upload(http, fake, name, a) == (200, {"name": name, "subfolder": "", "type": "input"})
    assert await upload(http, fake, name, b) == (
        200,
        {"name": "orch_upload (1).png", "subfolder": "", "type": "input"},
    )
    assert await upload(http, fake, name, b, overwrite="true") == (
        200,
        {"name": name, "subfolder": "", "type": "input"},
    )
    assert (fake.workdir / "input" / name).read_bytes() == b
    assert await upload(http, fake, name, a, subfolder="sub") == (
        200,
        {"name": name, "subfolder": "sub", "type": "input"},
    )
    assert await upload(http, fake, name, a, type="temp") == (
        200,
        {"name": name, "subfolder": "", "type": "temp"},
    )
    assert await upload(http, fake, "../escape.png", a) == (
        200,
        {"name": "..%2Fescape.png", "subfolder": "", "type": "input"},
    )
    async with http.post(fake.url + "/upload/image", data={"subfolder": "x"}) as resp:
        assert resp.status == 400 and await resp.text() == ""
    info = await get_json(http, fake.url + "/object_info/LoadImage")
    assert info["LoadImage"]["input"]["required"]["image"][0] == [
        "..%2Fescape.png",
        "orch_upload (1).png",
        name,
    ]
    # LoadImage accepts "<subfolder>/<name> [input]"; the output has the uploaded size.
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": f"sub/{name} [input]"}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "bilinear",
                "width": 80,
                "height": 0,
                "crop": "disabled",
            },
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "scaled"}},
    }
    _, body = await post(http, fake, graph)
    assert (await wait_history(http, fake, body["prompt_id"]))["status"]["status_str"] == "success"
    with Image.open(fake.workdir / "output" / "scaled_00001_.png") as img:
        assert img.size == (80, 60)


async def test_origin_mismatch_is_403(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    async with http.post(
        fake.url + "/prompt", json={"prompt": invert_graph()}, headers={"Origin": "http://evil.example"}
    ) as resp:
        assert resp.status == 403 and await resp.read() == b""
    async with http.get(fake.url + "/queue", headers={"Origin": f"http://localhost:{fake.port}"}) as resp:
        assert resp.status == 403
    async with http.get(fake.url + "/queue", headers={"Origin": fake.url}) as resp:
        assert resp.status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(fake.url + "/ws?clientId=x", headers={"Origin": "http://evil.example"})
    assert info.value.status == 403
    assert fake.prompts_posted == {}


# --- 4.4-4.8 other endpoints --------------------------------------------------------------------------------
async def test_info_endpoints(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    info = await get_json(http, fake.url + "/object_info")
    assert len(info) == 423
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == list(fake.checkpoints)
    assert info["CheckpointLoader"]["input"]["required"]["ckpt_name"][0] == list(fake.checkpoints)
    assert info["LoadImage"]["input"]["required"]["image"] == [[], {"image_upload": True}]
    assert info["UpscaleModelLoader"]["input"]["required"]["model_name"][0] == "COMBO"
    one = await get_json(http, fake.url + "/object_info/EmptyImage")
    assert one == {"EmptyImage": info["EmptyImage"]}
    assert one["EmptyImage"]["input"]["required"]["width"] == WIDTH_CONFIG
    assert await get_json(http, fake.url + "/object_info/NoSuchNode") == {}
    assert (await get_json(http, fake.url + "/models"))[:3] == ["checkpoints", "configs", "loras"]
    assert await get_json(http, fake.url + "/models/checkpoints") == list(fake.checkpoints)
    assert await get_json(http, fake.url + "/models/loras") == []
    assert len(await get_json(http, fake.url + "/models/upscale_models")) == 2
    assert await get_json(http, fake.url + "/embeddings") == []
    features = await get_json(http, fake.url + "/features")
    assert features == {
        "supports_preview_metadata": True,
        "max_upload_size": 104857600,
        "extension": {"manager": {"supports_v4": True}},
    }
    stats = await get_json(http, fake.url + "/api/system_stats")
    assert stats["system"]["comfyui_version"] == "0.8.0" and stats["devices"][0]["type"] == "cpu"
    assert await get_json(http, fake.url + "/prompt") == {"exec_info": {"queue_remaining": 0}}
    for path in ("/models/not_a_folder", "/no/such/route", "/interrupt", "/_fake/nothing"):
        async with http.get(fake.url + path) as resp:
            assert (resp.status, await resp.read()) == (404, b""), path
    async with http.get(fake.url + "/queue") as resp:
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_history_free_and_duplicate_ids(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    ws = await connect(http, fake, "c1")
    ids = []
    for color in (1, 2, 3):
        _, body = await post(http, fake, invert_graph(color=color), client_id="c1")
        await until_done(ws, body["prompt_id"])
        ids.append(body["prompt_id"])
    assert list(await get_json(http, fake.url + "/history?max_items=2")) == ids[1:]
    assert list(await get_json(http, fake.url + "/history?max_items=1&offset=0")) == ids[:1]
    assert await get_json(http, fake.url + "/history/not-a-real-id") == {}
    async with http.post(fake.url + "/history", json={"delete": [ids[0]]}) as resp:
        assert resp.status == 200 and await resp.text() == ""
    assert list(await get_json(http, fake.url + "/history")) == ids[1:]

    # free_memory drops the output cache: the identical prompt runs again.
    for payload in ({"unload_models": True}, {}, {"free_memory": True}):
        async with http.post(fake.url + "/free", json=payload) as resp:
            assert resp.status == 200
    _, body = await post(http, fake, invert_graph(color=3), client_id="c1")
    frames = await until_done(ws, body["prompt_id"])
    assert frames[3]["data"]["nodes"] == []

    # Same client-supplied prompt_id twice: both accepted, the second run's history wins.
    for color in (11, 22):
        status, body = await post(http, fake, invert_graph(color=color), client_id="c1", prompt_id="dup")
        assert status == 200 and body["prompt_id"] == "dup"
        await until_done(ws, "dup")
    entry = await get_json(http, fake.url + "/history/dup")
    assert entry["dup"]["prompt"][2]["1"]["inputs"]["color"] == 22
    assert fake.prompts_posted["dup"] == 2
    async with http.post(fake.url + "/history", json={"clear": True}) as resp:
        assert resp.status == 200
    assert await get_json(http, fake.url + "/history") == {}


# --- simulated nodes ---------------------------------------------------------------------------------------
async def test_txt2img_pipeline_is_deterministic(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    colors = []
    for i, seed in enumerate((7, 7, 8)):
        async with FakeComfyUI(workdir=tmp_path / str(i)) as fake:
            ws = await connect(http, fake, "c1")
            _, body = await post(http, fake, txt2img_graph(seed=seed, steps=5, batch=2), client_id="c1")
            frames = await until_done(ws, body["prompt_id"])
            progress = [(f["data"]["value"], f["data"]["max"]) for f in frames if f["type"] == "progress"]
            assert progress == [(n, 5) for n in range(1, 6)]
            images = next(f for f in frames if f["type"] == "executed")["data"]["output"]["images"]
            assert [im["filename"] for im in images] == ["t2i_00001_.png", "t2i_00002_.png"]
            with (
                Image.open(fake.workdir / "output" / "t2i_00001_.png") as a,
                Image.open(fake.workdir / "output" / "t2i_00002_.png") as b,
            ):
                assert a.size == b.size == (96, 64)
                colors.append((a.getpixel((0, 0)), b.getpixel((0, 0))))
    assert colors[0] == colors[1] and colors[0] != colors[2] and colors[0][0] != colors[0][1]


async def test_checkpoint_list_and_img2img(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with FakeComfyUI(workdir=tmp_path, checkpoints=["only.safetensors"]) as fake:
        status, body = await post(http, fake, txt2img_graph())
        assert status == 400
        error = body["node_errors"]["4"]["errors"][0]
        assert error["details"] == "ckpt_name: 'sd15-fake.safetensors' not in ['only.safetensors']"
        assert await get_json(http, fake.url + "/models/checkpoints") == ["only.safetensors"]
        await upload(http, fake, "init.png", png_bytes((72, 40)))
        graph = txt2img_graph(ckpt="only.safetensors")
        graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "init.png"}}
        graph["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
        graph["3"]["inputs"]["denoise"] = 0.5
        _, body = await post(http, fake, graph)
        entry = await wait_history(http, fake, body["prompt_id"])
        assert entry["status"]["status_str"] == "success"
        with Image.open(fake.workdir / "output" / entry["outputs"]["9"]["images"][0]["filename"]) as img:
            assert img.size == (72, 40)


async def test_throughput_with_zero_render_time(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    ws = await connect(http, fake, "bench")
    t0 = time.perf_counter()
    n = 150
    posts = [
        post(http, fake, txt2img_graph(seed=i, width=64, height=64), client_id="bench") for i in range(n)
    ]
    bodies = [body for _, body in await asyncio.gather(*posts)]
    last = max(bodies, key=lambda body: body["number"])
    await until_done(ws, last["prompt_id"], limit=20)
    elapsed = time.perf_counter() - t0
    history = await get_json(http, fake.url + "/history")
    assert len(history) == n and all(e["status"]["status_str"] == "success" for e in history.values())
    assert elapsed / n < 0.02, f"{elapsed / n * 1000:.1f} ms per prompt"
    assert fake.max_in_flight >= 2


# --- faults ------------------------------------------------------------------------------------------------
async def test_fault_refuse(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    ws = await connect(http, fake, "c1")
    async with http.get(fake.url + "/system_stats") as resp:  # leaves a keep-alive connection in the pool
        await resp.read()
    port = fake.port
    fake.faults.refuse = True
    for _ in range(2):
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(fake.url + "/system_stats") as resp:
                await resp.read()
    assert (await ws.receive(timeout=1)).type in (WSMsgType.CLOSED, WSMsgType.CLOSE, WSMsgType.ERROR)
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.ws_connect(fake.url + "/ws")
    fake.faults.refuse = False
    assert fake.port == port
    async with http.get(fake.url + "/system_stats") as resp:
        assert resp.status == 200
    ws = await connect(http, fake, "c1")
    _, body = await post(http, fake, invert_graph(), client_id="c1")
    assert types(await until_done(ws, body["prompt_id"])) == SEQ_SUCCESS


async def test_fault_http_500_and_control_surface(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    async with http.post(
        fake.url + "/_fake/faults", json={"http_500": True, "slow": 2, "fail_node_types": ["KSampler"]}
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "refuse": False,
            "http_500": True,
            "hang": False,
            "drop_socket": False,
            "slow": 2.0,
            "oom": False,
            "fail_node_types": ["KSampler"],
            "delay": 0.0,
            "bad_output": "",
        }
    assert fake.faults.http_500 and fake.faults.fail_node_types == {"KSampler"}
    async with http.post(fake.url + "/prompt", json={"prompt": invert_graph()}) as resp:
        assert resp.status == 500 and await resp.text() == TEXT_500 and resp.headers["Connection"] == "close"
    async with http.get(fake.url + "/queue") as resp:
        assert resp.status == 200
    async with http.post(fake.url + "/_fake/faults", json={"nonsense": True}) as resp:
        assert resp.status == 400
    async with http.post(fake.url + "/_fake/faults", json={"http_500": False, "duration": 0.1}) as resp:
        assert resp.status == 200
    assert not fake.faults.http_500
    await asyncio.sleep(0.2)
    assert fake.faults.http_500  # reverted after `duration`
    fake.faults.clear()
    assert fake.faults == Faults()
    state = await get_json(http, fake.url + "/_fake/state")
    assert set(state) >= {"prompts_posted", "max_in_flight", "interrupts", "faults", "queue"}
    assert state["queue"] == {"running": [], "pending": []}


async def test_fault_hang_then_clear_or_interrupt(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    ws = await connect(http, fake, "c1")
    fake.faults.hang = True
    _, body = await post(http, fake, invert_graph(), client_id="c1")
    await asyncio.sleep(0.3)
    assert await get_json(http, f"{fake.url}/history/{body['prompt_id']}") == {}
    assert (await get_json(http, fake.url + "/_fake/state"))["queue"]["running"] == [body["prompt_id"]]
    fake.faults.hang = False
    assert types(await until_done(ws, body["prompt_id"])) == SEQ_SUCCESS

    fake.faults.hang = True
    _, body = await post(http, fake, invert_graph(), client_id="c1")  # fully cached: still held
    await asyncio.sleep(0.1)
    async with http.post(fake.url + "/interrupt", json={"prompt_id": body["prompt_id"]}):
        pass
    frames = await until_done(ws, body["prompt_id"])
    assert types(frames)[-3:] == ["execution_interrupted", "status", "executing"]
    fake.faults.hang = False


async def test_fault_drop_socket(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    ws = await connect(http, fake, "c1")
    fake.faults.drop_socket = True
    _, body = await post(http, fake, invert_graph(), client_id="c1")
    seen = []
    while True:
        msg = await ws.receive(timeout=2)
        if msg.type != WSMsgType.TEXT:
            break
        seen.append(json.loads(msg.data)["type"])
    assert "execution_start" in seen and "execution_success" not in seen
    entry = await wait_history(http, fake, body["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    fake.faults.drop_socket = False
    ws = await connect(http, fake, "c1")
    _, body = await post(http, fake, invert_graph(color=5), client_id="c1")
    assert types(await until_done(ws, body["prompt_id"]))[-1] == "executing"


async def test_fault_slow_and_render_time(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with FakeComfyUI(workdir=tmp_path, render_time=0.1) as fake:
        for slow, low, high in ((1.0, 0.1, 0.6), (3.0, 0.3, 1.2)):
            fake.faults.slow = slow
            t0 = time.monotonic()
            _, body = await post(http, fake, txt2img_graph(seed=int(slow * 10)))
            await wait_history(http, fake, body["prompt_id"])
            assert low <= time.monotonic() - t0 <= high
        # Without a sampler the render time is spent in the first executed node.
        t0 = time.monotonic()
        _, body = await post(http, fake, invert_graph())
        await wait_history(http, fake, body["prompt_id"])
        assert time.monotonic() - t0 >= 0.3


async def test_fault_oom_and_fail_node_types(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    ws = await connect(http, fake, "c1")
    _, body = await post(http, fake, txt2img_graph(), client_id="c1")
    await until_done(ws, body["prompt_id"])
    fake.faults.oom = True
    _, body = await post(http, fake, txt2img_graph(), client_id="c1")  # identical, but the sampler must run
    frames = await until_done(ws, body["prompt_id"])
    error = next(f["data"] for f in frames if f["type"] == "execution_error")
    assert (error["node_id"], error["node_type"]) == ("3", "KSampler")
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert (
        error["exception_message"].startswith("Allocation on device")
        and "out of memory" in error["exception_message"]
    )
    _, body = await post(http, fake, invert_graph(), client_id="c1")  # no sampler: fails at the output node
    error = next(f["data"] for f in await until_done(ws, body["prompt_id"]) if f["type"] == "execution_error")
    assert error["node_type"] == "SaveImage"
    fake.faults.oom = False

    fake.faults.fail_node_types = {"VAEDecode"}
    _, body = await post(http, fake, txt2img_graph(), client_id="c1")
    error = next(f["data"] for f in await until_done(ws, body["prompt_id"]) if f["type"] == "execution_error")
    assert (error["node_id"], error["node_type"]) == ("8", "VAEDecode")
    assert (await wait_history(http, fake, body["prompt_id"]))["status"]["status_str"] == "error"


# --- standalone process ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_run_as_module(http: aiohttp.ClientSession) -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfyflow.testing.fake_comfyui", "--port", str(port), "--render-time", "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert f"127.0.0.1:{port}" in line
        async with http.get(f"http://127.0.0.1:{port}/models/checkpoints") as resp:
            assert await resp.json() == ["sd15-fake.safetensors", "dreamshaper_8.safetensors"]
        async with http.post(f"http://127.0.0.1:{port}/_fake/faults", json={"http_500": True}) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0


# --- against the raw captures (skipped in CI) -------------------------------------------------------------
def _signature(frames: list[dict[str, Any]]) -> list[str]:
    out = []
    for f in frames:
        data, t = f["data"], f["type"]
        if t == "progress_state":
            t += str([(k, v["state"], v["value"], v["max"]) for k, v in data["nodes"].items()])
        elif t in ("executing", "executed"):
            t += f"({data.get('node')})"
        elif t == "execution_cached":
            t += str(data["nodes"])
        elif t == "status":
            t += str(data["status"]["exec_info"]["queue_remaining"])
        out.append(t)
    return out


async def test_replay_s01_validation_bodies(fake: FakeComfyUI, http: aiohttp.ClientSession) -> None:
    for name, ex in load_capture("s01_prompt_errors.json").items():
        if ex.get("method") != "POST" or ex.get("path") != "/prompt":
            continue
        raw = json.dumps(ex["request_json"]) if "request_json" in ex else ex["request_body"]
        async with http.post(fake.url + "/prompt", data=raw) as resp:
            assert resp.status == ex["status"], name
            if "json" in ex:
                got, want = await resp.json(), ex["json"]
                for body in (got, want):
                    body.pop("prompt_id", None)
                    body.pop("number", None)
                assert _scrub_tracebacks(got) == _scrub_tracebacks(want), name
            else:
                assert await resp.text() == ex["text"], name


@pytest.mark.parametrize("capture", ["s02_success_cached.json", "s03_variants.json", "s04_exec_error.json"])
async def test_replay_capture_frame_sequences(
    fake: FakeComfyUI, http: aiohttp.ClientSession, capture: str
) -> None:
    unsupported = {"saveimagewebsocket_legacy_client", "saveimagewebsocket_feature_flag_client"}
    cap = load_capture(capture)
    png = png_bytes((64, 64))
    for sub in ("", "orchsub_0ea3b4"):
        await upload(http, fake, "orch_upload_0ea3b4.png", png, subfolder=sub)
    await upload(http, fake, "broken_5eaa51.png", b"not an image")
    sockets: dict[str, Any] = {}
    for run in cap["runs"]:
        if run["label"] in unsupported:
            continue
        request = run["post"]["request_json"]
        client_id = request.get("client_id")
        # The captured corrupt model file is emulated with a fault on its loader class.
        fake.faults.fail_node_types = set()
        if "corrupt-not-a-model.safetensors" in json.dumps(request):
            fake.faults.fail_node_types = {"UpscaleModelLoader"}
            request = json.loads(json.dumps(request).replace("corrupt-not-a-model", "tiny-random-esrgan-x2"))
        if client_id is not None and client_id not in sockets:
            sockets[client_id] = await connect(http, fake, client_id)
        ws = sockets[client_id] if client_id is not None else next(iter(sockets.values()))
        async with http.post(fake.url + "/prompt", json=request) as resp:
            body = await resp.json()
        if client_id is not None:
            frames = await until_done(ws, body["prompt_id"])
        else:
            await wait_history(http, fake, body["prompt_id"])
            frames = await drain(ws)
        expected = [m["data"] for m in run["ws_messages"] if m["kind"] == "text"]
        assert _signature(frames) == _signature(expected), run["label"]
        for got, want in zip(frames, expected, strict=True):
            assert set(got["data"]) == set(want["data"]), (run["label"], got["type"])
        entry = (await get_json(http, f"{fake.url}/history/{body['prompt_id']}"))[body["prompt_id"]]
        want = run["history"]["json"][run["post"]["json"]["prompt_id"]]
        normalise = lambda x: re.sub(r"temp_[a-z]{5}_", "temp_X_", json.dumps(x))  # noqa: E731
        assert normalise(entry["outputs"]) == normalise(want["outputs"]), run["label"]
        assert entry["meta"] == want["meta"] and entry["prompt"][4] == want["prompt"][4], run["label"]
        assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in want["status"]["messages"]]

import pytest

from comfyflow.errors import BackendUnavailable, Canceled, ExecutionFailed, OutOfMemory
from comfyflow.plugins.comfyui.outputs import (
    content_type_for,
    failure,
    file_extension,
    find_in_queue,
    node_order,
    parse_history_entry,
    parse_outputs,
)
from comfyflow.plugins.protocols import OutputRef, PromptPhase

# History entries copied from PROTOCOL.md section 3 (prompt graphs trimmed).
SUCCESS = {
    "prompt": [20, "2460f37b", {}, {"client_id": "orch-7c31e7a1"}, ["3"]],
    "outputs": {"3": {"images": [{"filename": "orch_ac8b4c_00001_.png", "subfolder": "", "type": "output"}]}},
    "status": {
        "status_str": "success",
        "completed": True,
        "messages": [
            ["execution_start", {"prompt_id": "2460f37b", "timestamp": 1795891665167}],
            ["execution_cached", {"nodes": [], "prompt_id": "2460f37b", "timestamp": 1795891665169}],
            ["execution_success", {"prompt_id": "2460f37b", "timestamp": 1795891665173}],
        ],
    },
    "meta": {"3": {"node_id": "3", "display_node": "3", "parent_node": None, "real_node_id": "3"}},
}
ERROR = {
    "prompt": [40, "d21fd781", {}, {"create_time": 1795891726522}, ["3"]],
    "outputs": {},
    "status": {
        "status_str": "error",
        "completed": False,
        "messages": [
            ["execution_start", {"prompt_id": "d21fd781", "timestamp": 1795891726523}],
            [
                "execution_error",
                {
                    "prompt_id": "d21fd781",
                    "node_id": "1",
                    "node_type": "LoadImage",
                    "executed": [],
                    "exception_message": "cannot identify image file '<comfyui>/input/broken_5eaa51.png'\n",
                    "exception_type": "PIL.UnidentifiedImageError",
                    "traceback": ["<7 lines trimmed>"],
                    "current_inputs": {"image": ["broken_5eaa51.png"]},
                    "current_outputs": ["3", "1"],
                    "timestamp": 1795891726526,
                },
            ],
        ],
    },
    "meta": {},
}
INTERRUPTED = {
    "outputs": {},
    "status": {
        "status_str": "error",
        "completed": False,
        "messages": [
            ["execution_start", {"prompt_id": "e2fd210d", "timestamp": 1795891925419}],
            [
                "execution_interrupted",
                {
                    "prompt_id": "e2fd210d",
                    "node_id": "3",
                    "node_type": "ImageUpscaleWithModel",
                    "executed": ["1"],
                    "timestamp": 1795891932621,
                },
            ],
        ],
    },
    "meta": {},
}
CACHED_WITHOUT_CLIENT_ID = {
    "outputs": {},
    "status": {"status_str": "success", "completed": True, "messages": []},
    "meta": {},
}


def test_success_entry_gives_its_output_files():
    status = parse_history_entry(SUCCESS)
    assert status.phase is PromptPhase.SUCCEEDED
    assert status.outputs == [OutputRef("3", "images", "orch_ac8b4c_00001_.png", "", "output")]


def test_error_entry_keeps_node_and_exception():
    status = parse_history_entry(ERROR)
    assert status.phase is PromptPhase.FAILED
    assert status.error == {
        "kind": "error",
        "node_id": "1",
        "node_type": "LoadImage",
        "exception_type": "PIL.UnidentifiedImageError",
        "exception_message": "cannot identify image file '<comfyui>/input/broken_5eaa51.png'",
        "traceback": ["<7 lines trimmed>"],
    }
    exc = failure("d21fd781", status.error, canceled=False, backend="http://b")
    assert isinstance(exc, ExecutionFailed) and not isinstance(exc, OutOfMemory)
    assert exc.message.startswith("node 1 (LoadImage) failed: PIL.UnidentifiedImageError: cannot identify")
    assert exc.details["node_type"] == "LoadImage" and exc.details["backend"] == "http://b"


def test_interrupted_entry_is_canceled_only_when_we_asked():
    status = parse_history_entry(INTERRUPTED)
    assert status.phase is PromptPhase.FAILED and status.error["kind"] == "interrupted"
    assert isinstance(failure("e2fd210d", status.error, canceled=True), Canceled)
    other = failure("e2fd210d", status.error, canceled=False)
    assert isinstance(other, BackendUnavailable) and other.transient
    assert "node 3 (ImageUpscaleWithModel)" in other.message


def test_cached_rerun_without_client_id_has_no_outputs():
    status = parse_history_entry(CACHED_WITHOUT_CLIENT_ID)
    assert status.phase is PromptPhase.SUCCEEDED and status.outputs == []


@pytest.mark.parametrize(
    ("exception_type", "message"),
    [
        ("torch.OutOfMemoryError", "CUDA error"),
        (
            "torch.cuda.OutOfMemoryError",
            "Allocation on device 0 would exceed allowed memory. (out of memory)",
        ),
        ("RuntimeError", "MPS backend out of memory (MPS allocated: 1 GB)"),
        ("RuntimeError", "OOM while decoding"),
    ],
)
def test_out_of_memory_is_recognised(exception_type, message):
    info = {
        "kind": "error",
        "node_id": "5",
        "node_type": "KSampler",
        "exception_type": exception_type,
        "exception_message": message,
    }
    exc = failure("p", info, canceled=False)
    assert isinstance(exc, OutOfMemory) and exc.transient
    assert exc.message.startswith("node 5 (KSampler) ran out of memory")


def test_room_is_not_oom():
    info = {"kind": "error", "exception_type": "ValueError", "exception_message": "no room for zoom"}
    assert type(failure("p", info, canceled=False)) is ExecutionFailed


def test_every_output_kind_in_node_order_output_before_temp():
    outputs = {
        "10": {
            "gifs": [
                {"filename": "anim_00001.webp", "subfolder": "", "type": "output", "format": "image/webp"}
            ]
        },
        "9": {
            "images": [
                {"filename": "a_00001_.png", "subfolder": "sub", "type": "output"},
                {"filename": "a_00002_.png", "subfolder": "sub", "type": "output"},
            ],
            "animated": [False],
            "text": ["hello"],
        },
        "4": {"images": [{"filename": "ComfyUI_temp_xnniy_00001_.png", "subfolder": "", "type": "temp"}]},
        "12": {"audio": [{"filename": "sound.flac", "subfolder": "audio", "type": "output"}]},
        "2:1": {"3d": [{"filename": "mesh.glb", "type": "output"}]},
        "11": {"videos": [{"filename": "clip.mp4", "subfolder": "", "type": "output"}], "bogus": "x"},
    }
    refs = parse_outputs(outputs)
    assert [(r.node_id, r.kind, r.filename) for r in refs] == [
        ("2:1", "3d", "mesh.glb"),
        ("9", "images", "a_00001_.png"),
        ("9", "images", "a_00002_.png"),
        ("10", "gifs", "anim_00001.webp"),
        ("11", "videos", "clip.mp4"),
        ("12", "audio", "sound.flac"),
    ]
    assert refs[1].subfolder == "sub"


def test_temp_items_are_used_when_nothing_was_saved():
    outputs = {
        "4": {
            "images": [
                {"filename": "ComfyUI_temp_a_00001_.png", "subfolder": "", "type": "temp"},
                {"filename": "ComfyUI_temp_a_00001_.png", "subfolder": "", "type": "temp"},
            ]
        }
    }
    assert [r.type for r in parse_outputs(outputs)] == ["temp"]
    assert parse_outputs({}) == [] and parse_outputs(None) == []


def test_node_order_is_numeric():
    assert sorted(["10", "2", "1:3", "a", "1"], key=node_order) == ["1", "1:3", "2", "10", "a"]


def test_queue_lookup_finds_running_and_pending_with_client_id():
    queue = {
        "queue_running": [[46, "run", {}, {"client_id": "orch-1", "create_time": 1}, ["4"]]],
        "queue_pending": [[-48, "p1", {}, {}, ["4"]], [47, "p2", {}, {"client_id": "orch-2"}, ["4"]]],
    }
    assert find_in_queue(queue, "run") == (PromptPhase.RUNNING, "orch-1")
    assert find_in_queue(queue, "p2") == (PromptPhase.PENDING, "orch-2")
    assert find_in_queue(queue, "p1") == (PromptPhase.PENDING, None)
    assert find_in_queue(queue, "zzz") == (PromptPhase.UNKNOWN, None)
    assert find_in_queue(None, "zzz") == (PromptPhase.UNKNOWN, None)


@pytest.mark.parametrize(
    ("filename", "content_type", "extension"),
    [
        ("x_00001_.png", "image/png", "png"),
        ("CLIP.MP4", "video/mp4", "mp4"),
        ("weird.tar.gz-backup", "image/webp", "webp"),
        ("no-suffix", "image/jpeg", "jpg"),
        ("evil.p/ng", "image/png", "png"),
        ("x.", "application/x-unknown-thing", "bin"),
    ],
)
def test_extension_is_sanitised(filename, content_type, extension):
    assert file_extension(filename, content_type) == extension


def test_content_type_falls_back_to_the_extension():
    assert content_type_for("a.png", "image/png") == "image/png"
    assert content_type_for("a.webp", "") == "image/webp"
    assert content_type_for("a.mp4", "application/octet-stream") == "video/mp4"
    assert content_type_for("a.zzz", "") == "application/octet-stream"

import json

from comfyflow.plugins.comfyui.render import read_frame
from comfyflow.plugins.protocols import RenderEvent

PID = "2460f37b"
GRAPH = {
    "1": {"class_type": "EmptyImage"},
    "2": {"class_type": "ImageInvert"},
    "3": {"class_type": "SaveImage"},
}


def frame(kind, **data):
    return json.dumps({"type": kind, "data": data})


def test_frames_of_a_successful_run_become_events():
    # PROTOCOL.md 2.1, abridged (progress_state maps trimmed)
    frames = [
        frame("status", status={"exec_info": {"queue_remaining": 1}}),
        frame("execution_start", prompt_id=PID, timestamp=1),
        frame("execution_cached", nodes=[], prompt_id=PID, timestamp=1),
        frame("progress_state", prompt_id=PID, nodes={}),
        frame("executing", node="1", display_node="1", prompt_id=PID),
        frame("progress", value=2, max=4, prompt_id=PID, node="2"),
        frame("executed", node="3", display_node="3", output={"images": []}, prompt_id=PID),
        frame("execution_success", prompt_id=PID, timestamp=2),
        frame("status", status={"exec_info": {"queue_remaining": 0}}),
        frame("executing", node=None, prompt_id=PID),
    ]
    got = [read_frame(f, PID, GRAPH) for f in frames]
    assert got == [
        (False, None, False),
        (True, RenderEvent("started"), False),
        (True, RenderEvent("cached", value=0, max=3), False),
        (True, None, False),
        (True, RenderEvent("node", node="1", node_type="EmptyImage"), False),
        (True, RenderEvent("progress", node="2", node_type="ImageInvert", value=2, max=4), False),
        (True, RenderEvent("executed", node="3", node_type="SaveImage"), False),
        (True, None, True),
        (False, None, False),
        (True, None, True),
    ]


def test_other_prompts_frames_and_junk_are_ignored():
    assert read_frame(frame("progress", value=1, max=2, prompt_id="other", node="3"), PID, GRAPH)[0] is False
    assert read_frame(frame("executing", node=None, prompt_id="other"), PID, GRAPH) == (False, None, False)
    assert read_frame("{not json", PID, GRAPH) == (False, None, False)
    assert read_frame("[1, 2]", PID, GRAPH) == (False, None, False)


def test_error_and_interrupt_frames_end_the_prompt():
    assert read_frame(frame("execution_error", prompt_id=PID, node_id="1"), PID, GRAPH) == (True, None, True)
    assert read_frame(frame("execution_interrupted", prompt_id=PID), PID, GRAPH) == (True, None, True)


def test_executing_without_prompt_id_after_a_reconnect_is_ours():
    assert read_frame(frame("executing", node="3"), PID, GRAPH) == (
        True,
        RenderEvent("node", node="3", node_type="SaveImage"),
        False,
    )

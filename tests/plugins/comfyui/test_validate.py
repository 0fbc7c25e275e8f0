import pytest

from comfyflow.errors import GraphInvalid
from comfyflow.plugins.comfyui.validate import (
    capabilities_from_object_info,
    check_graph,
    combo_options,
    graph_invalid,
    rejected_by_server,
)

INVERT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 77}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}


def _errors(problems):
    return [
        (p["node_id"], p["class_type"], e["type"], e["input_name"]) for p in problems for e in p["errors"]
    ]


def test_combo_options_reads_both_encodings():
    assert combo_options([["a", "b"], {"image_upload": True}]) == ["a", "b"]
    assert combo_options([["a"]]) == ["a"]
    assert combo_options(["COMBO", {"multiselect": False, "options": ["x", "y"]}]) == ["x", "y"]
    assert combo_options(["INT", {"default": 1}]) is None
    assert combo_options(["IMAGE"]) is None
    assert combo_options(None) is None


def test_capabilities_list_models_per_folder(object_info):
    caps = capabilities_from_object_info(object_info)
    assert "KSampler" in caps.node_classes and "SaveImage" in caps.node_classes
    assert caps.models["checkpoints"] == ["sd15-fake.safetensors", "dreamshaper_8.safetensors"]
    # V3 encoding (UpscaleModelLoader) and classic (VAELoader) alike
    assert caps.models["upscale_models"] == [
        "slow-random-esrgan-x2.safetensors",
        "tiny-random-esrgan-x2.safetensors",
    ]
    assert caps.models["vae"] == ["pixel_space"]
    assert caps.models["loras"] == [] and caps.models["hypernetworks"] == []
    assert "euler" in caps.samplers and "dpmpp_2m" in caps.samplers
    assert "karras" in caps.schedulers


def test_a_valid_graph_has_no_problems(object_info):
    assert check_graph(INVERT, object_info) == []


def test_unknown_node_class_is_named(object_info):
    graph = {**INVERT, "2": {"class_type": "NoSuchNode", "inputs": {"image": ["1", 0]}}}
    assert _errors(check_graph(graph, object_info)) == [("2", "NoSuchNode", "unknown_node", None)]


def test_missing_model_lists_what_exists(object_info):
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "foo.safetensors"}}}
    (problem,) = check_graph(graph, object_info)
    (error,) = problem["errors"]
    assert error["message"] == (
        "model 'foo.safetensors' not found in checkpoints; "
        "available: sd15-fake.safetensors, dreamshaper_8.safetensors"
    )
    assert error["available"] == ["sd15-fake.safetensors", "dreamshaper_8.safetensors"]
    exc = graph_invalid([problem], source="the graph does not fit ComfyUI at http://x")
    assert isinstance(exc, GraphInvalid)
    assert "node 1 (CheckpointLoaderSimple): model 'foo.safetensors' not found" in exc.message
    assert exc.details["nodes"][0]["errors"][0]["input_name"] == "ckpt_name"


def test_v3_combo_and_plain_combo_values_are_checked(object_info):
    graph = {
        "1": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "nope.pth"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "uploaded-after-the-cache.png"}},
        "3": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["2", 0],
                "upscale_method": "magic",
                "width": 8,
                "height": 8,
                "crop": "disabled",
            },
        },
    }
    problems = check_graph(graph, object_info)
    # LoadImage validates its own (upload) combo: not flagged even though the cached list lacks the file.
    assert _errors(problems) == [
        ("1", "UpscaleModelLoader", "value_not_in_list", "model_name"),
        ("3", "ImageScale", "value_not_in_list", "upscale_method"),
    ]
    assert (
        "expected one of: nearest-exact, bilinear, area, bicubic, lanczos"
        in problems[1]["errors"][0]["message"]
    )


def test_links_to_missing_nodes_and_bad_output_indexes(object_info):
    graph = {**INVERT, "2": {"class_type": "ImageInvert", "inputs": {"image": ["99", 0]}}}
    assert _errors(check_graph(graph, object_info)) == [("2", "ImageInvert", "missing_linked_node", "image")]
    graph = {**INVERT, "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 3]}}}
    assert _errors(check_graph(graph, object_info)) == [("2", "ImageInvert", "bad_link", "image")]


def test_missing_required_inputs(object_info):
    graph = {
        **INVERT,
        "1": {"class_type": "EmptyImage", "inputs": {"height": 64, "batch_size": 1, "color": 0}},
    }
    assert _errors(check_graph(graph, object_info)) == [
        ("1", "EmptyImage", "required_input_missing", "width")
    ]
    graph = {**INVERT, "2": {"class_type": "ImageInvert", "inputs": {}}}
    assert _errors(check_graph(graph, object_info)) == [
        ("2", "ImageInvert", "required_input_missing", "image")
    ]


def test_nodes_without_class_type_and_empty_graphs(object_info):
    assert _errors(check_graph({**INVERT, "4": {"inputs": {}}}, object_info)) == [
        ("4", None, "invalid_prompt", None)
    ]
    assert check_graph({}, object_info)[0]["errors"][0]["type"] == "prompt_no_outputs"


# --- ComfyUI's own 400 answers (bodies copied from PROTOCOL.md section 1.2) ---


def test_400_node_errors_become_per_node_details():
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "2": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "upscale_method: 'magic' not in ['nearest-exact', 'lanczos']",
                        "extra_info": {
                            "input_name": "upscale_method",
                            "input_config": [["nearest-exact"], {}],
                            "received_value": "magic",
                        },
                    }
                ],
                "dependent_outputs": ["3"],
                "class_type": "ImageScale",
            }
        },
    }
    exc = rejected_by_server(body, status=400)
    assert isinstance(exc, GraphInvalid)
    assert exc.message.startswith("ComfyUI rejected the graph: node 2 (ImageScale): Value not in list")
    assert exc.details["error"]["type"] == "prompt_outputs_failed_validation"
    (node,) = exc.details["nodes"]
    assert (
        node["node_id"] == "2" and node["class_type"] == "ImageScale" and node["dependent_outputs"] == ["3"]
    )
    (error,) = node["errors"]
    assert error["type"] == "value_not_in_list" and error["input_name"] == "upscale_method"
    assert "magic" in error["details"]


def test_400_without_node_errors_uses_the_top_level_error():
    body = {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node NoSuchNode does not exist.",
            "details": "Node ID '#2'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    exc = rejected_by_server(body, status=400)
    assert exc.message == (
        "ComfyUI rejected the graph: Cannot execute because node NoSuchNode does not exist. (Node ID '#2')"
    )
    assert exc.details["nodes"] == []


def test_200_with_node_errors_says_outputs_would_be_dropped():
    body = {
        "prompt_id": "p",
        "number": 17,
        "node_errors": {
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
        },
    }
    exc = rejected_by_server(body, status=200)
    assert "drop some outputs" in exc.message
    assert "node 4 (ImageInvert): Required input is missing: image" in exc.message


@pytest.mark.parametrize("body", [None, "text", {"error": "x", "node_errors": []}])
def test_odd_bodies_still_give_graph_invalid(body):
    assert isinstance(rejected_by_server(body, status=400), GraphInvalid)

import pytest

from comfyflow.errors import GraphInvalid, ValidationError
from comfyflow.models import Img2ImgRequest, RawGraphRequest, Txt2ImgRequest
from comfyflow.plugins.comfyui.templates import build_graph, default_model
from comfyflow.plugins.comfyui.validate import check_graph
from comfyflow.plugins.protocols import Capabilities


def _by_class(graph):
    return {node["class_type"]: (node_id, node["inputs"]) for node_id, node in graph.items()}


def test_txt2img_graph_has_the_classic_pipeline_and_request_values():
    request = Txt2ImgRequest(
        prompt="a red fox",
        negative_prompt="blurry",
        width=640,
        height=384,
        steps=12,
        cfg_scale=5.5,
        sampler="dpmpp_2m",
        scheduler="karras",
        batch_size=3,
    )
    graph = build_graph(request, model="sd15.safetensors", seed=42, filename_prefix="comfyflow/job1")
    nodes = _by_class(graph)
    assert set(nodes) == {
        "CheckpointLoaderSimple",
        "CLIPTextEncode",
        "EmptyLatentImage",
        "KSampler",
        "VAEDecode",
        "SaveImage",
    }
    ckpt_id, ckpt = nodes["CheckpointLoaderSimple"]
    assert ckpt == {"ckpt_name": "sd15.safetensors"}
    assert nodes["EmptyLatentImage"][1] == {"width": 640, "height": 384, "batch_size": 3}
    ks_id, ks = nodes["KSampler"]
    assert ks["seed"] == 42 and ks["steps"] == 12 and ks["cfg"] == 5.5 and ks["denoise"] == 1.0
    assert ks["sampler_name"] == "dpmpp_2m" and ks["scheduler"] == "karras"
    assert ks["model"] == [ckpt_id, 0]
    texts = {graph[ks["positive"][0]]["inputs"]["text"], graph[ks["negative"][0]]["inputs"]["text"]}
    assert texts == {"a red fox", "blurry"}
    assert graph[ks["positive"][0]]["inputs"]["text"] == "a red fox"
    assert graph[ks["positive"][0]]["inputs"]["clip"] == [ckpt_id, 1]
    decode_id, decode = nodes["VAEDecode"]
    assert decode == {"samples": [ks_id, 0], "vae": [ckpt_id, 2]}
    assert nodes["SaveImage"][1] == {"images": [decode_id, 0], "filename_prefix": "comfyflow/job1"}


def test_txt2img_graph_is_deterministic():
    request = Txt2ImgRequest(prompt="x")
    one = build_graph(request, model="m", seed=1, filename_prefix="p")
    assert one == build_graph(request, model="m", seed=1, filename_prefix="p")
    assert list(one) == sorted(one, key=int)


def test_img2img_with_size_scales_then_encodes_with_denoise():
    request = Img2ImgRequest(prompt="x", init_image="upload1234", denoise=0.4, width=768, height=512)
    graph = build_graph(request, model="m", seed=7, filename_prefix="p", input_image="sub/in.png")
    nodes = _by_class(graph)
    load_id, load = nodes["LoadImage"]
    assert load == {"image": "sub/in.png"}
    scale_id, scale = nodes["ImageScale"]
    assert scale["image"] == [load_id, 0] and (scale["width"], scale["height"]) == (768, 512)
    enc_id, enc = nodes["VAEEncode"]
    assert enc["pixels"] == [scale_id, 0]
    ks = nodes["KSampler"][1]
    assert ks["latent_image"] == [enc_id, 0] and ks["denoise"] == 0.4
    assert "EmptyLatentImage" not in nodes and "RepeatLatentBatch" not in nodes


def test_img2img_without_size_keeps_the_input_size_and_repeats_for_batches():
    request = Img2ImgRequest(prompt="x", init_image="upload1234", batch_size=2)
    graph = build_graph(request, model="m", seed=7, filename_prefix="p", input_image="in.png")
    nodes = _by_class(graph)
    assert "ImageScale" not in nodes
    assert nodes["VAEEncode"][1]["pixels"] == [nodes["LoadImage"][0], 0]
    repeat_id, repeat = nodes["RepeatLatentBatch"]
    assert repeat == {"samples": [nodes["VAEEncode"][0], 0], "amount": 2}
    assert nodes["KSampler"][1]["latent_image"] == [repeat_id, 0]


def test_img2img_needs_the_uploaded_name():
    with pytest.raises(ValidationError, match="input_image"):
        build_graph(
            Img2ImgRequest(prompt="x", init_image="upload1234"), model="m", seed=1, filename_prefix="p"
        )


def test_model_falls_back_to_the_request_and_is_required():
    graph = build_graph(Txt2ImgRequest(prompt="x", model="a.ckpt"), seed=1, filename_prefix="p")
    assert _by_class(graph)["CheckpointLoaderSimple"][1]["ckpt_name"] == "a.ckpt"
    with pytest.raises(ValidationError, match="model="):
        build_graph(Txt2ImgRequest(prompt="x"), seed=1, filename_prefix="p")
    with pytest.raises(ValidationError, match="seed"):
        build_graph(Txt2ImgRequest(prompt="x"), model="m", seed=-1, filename_prefix="p")


def test_raw_graph_is_a_plain_dict():
    request = RawGraphRequest(
        workflow={"1": {"class_type": "EmptyImage", "inputs": {"width": 8}, "_meta": {"title": "t"}}}
    )
    graph = build_graph(request, seed=0, filename_prefix="ignored")
    assert graph == {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}, "_meta": {"title": "t"}}}
    assert type(graph["1"]) is dict


def test_default_model_is_the_first_checkpoint():
    caps = Capabilities(node_classes=frozenset(), models={"checkpoints": ["b.safetensors", "a.safetensors"]})
    assert default_model(caps) == "b.safetensors"
    with pytest.raises(GraphInvalid, match="no checkpoint"):
        default_model(Capabilities(node_classes=frozenset(), models={}))


def test_templates_pass_validation_against_real_object_info(object_info):
    txt = build_graph(Txt2ImgRequest(prompt="x"), model="sd15-fake.safetensors", seed=1, filename_prefix="p")
    assert check_graph(txt, object_info) == []
    request = Img2ImgRequest(prompt="x", init_image="upload1234", width=256, height=256, batch_size=2)
    img = build_graph(
        request, model="sd15-fake.safetensors", seed=1, filename_prefix="p", input_image="new.png"
    )
    assert check_graph(img, object_info) == []

"""ControlNet weighted preprocessors (issue 18): depth_midas (transformers DPTForDepthEstimation folder) and
depth_anything (DepthAnythingForDepthEstimation folder) from `models/ControlNetAnnotators/<folder>/`, on tiny
random-weight models saved as the folders people download; a clear 422 naming the module and the folder when
absent; /controlnet/detect and a unit in a job use them."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tiny_controlnet import build_controlnet, write_original

from sdwebui.core.errors import ParamError
from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.controlnet_annotators import find_model_folder
from sdwebui.pipelines.controlnet_preprocess import PreprocessorError, run_preprocessor
from sdwebui.pipelines.controlnet_units import check_unit, module_list
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.scripts import GenerationTask, ScriptRegistry
from sdwebui.pipelines.txt2img import txt2img
from sdwebui.scripts.controlnet import ControlNet

LOC = ("alwayson_scripts", "controlnet", "args", 0)


def write_dpt(folder, seed=0):
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(seed)
    config = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                       image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).eval().save_pretrained(folder)


def write_dpt_hybrid(folder, seed=0):
    """The Intel/dpt-hybrid-midas layout: a BiT backbone under the ViT (tiny)."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    torch.manual_seed(seed)
    bit = BitConfig(global_padding="same", layer_type="bottleneck", depths=[1, 1, 1], hidden_sizes=[8, 16, 16],
                    embedding_size=8, out_features=["stage1", "stage2", "stage3"], num_groups=2)
    config = DPTConfig(is_hybrid=True, backbone_config=bit, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=32, image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=8, reassemble_factors=[1, 1, 1, 0.5],
                       backbone_featmap_shape=[1, 16, 4, 4], neck_ignore_stages=[0, 1], readout_type="project")
    DPTForDepthEstimation(config).eval().save_pretrained(folder)


def write_depth_anything(folder, seed=0):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                            image_size=518, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 16, 16],
                                 fusion_hidden_size=8, head_hidden_size=8)
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(folder)


def gradient(height=64, width=64) -> np.ndarray:
    image = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(200, 120, 40))
    draw.ellipse((2, 2, width // 3, height // 3), fill="white")
    return np.asarray(image)


def b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def annotators(tmp_path_factory):
    root = tmp_path_factory.mktemp("ControlNetAnnotators")
    write_dpt(root / "midas")  # the folder itself
    write_depth_anything(root / "depth_anything" / "depth-anything-small-hf")  # or one folder below it
    return root


def test_depth_midas_is_the_normalised_dpt_depth_at_the_processor_resolution(annotators):
    from transformers import DPTForDepthEstimation

    image = gradient()
    depth = run_preprocessor("depth_midas", image, 64, annotators=annotators)
    assert depth.shape == (64, 64, 3) and depth.dtype == np.uint8
    assert (depth[..., 0] == depth[..., 1]).all() and (depth[..., 0] == depth[..., 2]).all()
    assert depth.min() == 0 and depth.max() == 255
    # the square case through transformers' own forward, as the extension's MidasDetector: x / 127.5 - 1, min-max
    model = DPTForDepthEstimation.from_pretrained(annotators / "midas").eval()
    with torch.no_grad():
        raw = model(pixel_values=torch.from_numpy(image.copy()).float().div(127.5).sub(1).permute(2, 0, 1)[None])
    raw = raw.predicted_depth[0]
    expected = ((raw - raw.min()) / (raw.max() - raw.min()) * 255).clip(0, 255).numpy().astype(np.uint8)
    assert np.abs(depth[..., 0].astype(int) - expected.astype(int)).max() <= 1
    # not square: the shorter side at the resolution, padded to 64 for the model, the padding taken off
    wide = run_preprocessor("depth", gradient(40, 80), 64, annotators=annotators)
    assert wide.shape == (64, 128, 3)


def test_depth_midas_runs_the_hybrid_layout_at_any_padded_size(tmp_path):
    from transformers import DPTForDepthEstimation

    write_dpt_hybrid(tmp_path / "midas" / "dpt-hybrid-midas")
    image = gradient()
    depth = run_preprocessor("depth_midas", image, 64, annotators=tmp_path)
    model = DPTForDepthEstimation.from_pretrained(tmp_path / "midas" / "dpt-hybrid-midas").eval()
    with torch.no_grad():  # at the model's own size, transformers' forward gives the same map
        raw = model(pixel_values=torch.from_numpy(image.copy()).float().div(127.5).sub(1).permute(2, 0, 1)[None])
    raw = raw.predicted_depth[0]
    expected = ((raw - raw.min()) / (raw.max() - raw.min()) * 255).clip(0, 255).numpy().astype(np.uint8)
    assert np.abs(depth[..., 0].astype(int) - expected.astype(int)).max() <= 1
    wide = run_preprocessor("depth_midas", gradient(40, 80), 96, annotators=tmp_path)  # 96x192: not its 64x64
    assert wide.shape == (96, 192, 3) and wide.max() == 255


def test_depth_anything_runs_its_folder_and_the_weights_matter(annotators, tmp_path):
    image = gradient(48, 64)
    depth = run_preprocessor("depth_anything", image, 64, annotators=annotators)
    assert depth.shape == (64, 85, 3) and depth.min() == 0 and depth.max() == 255
    assert (depth[..., 0] == depth[..., 2]).all()
    assert np.array_equal(depth, run_preprocessor("depth_anything", image, 64, annotators=annotators))
    other = tmp_path / "other"
    write_depth_anything(other / "depth_anything", seed=1)
    assert not np.array_equal(depth, run_preprocessor("depth_anything", image, 64, annotators=other))


def test_absent_weights_name_the_module_and_the_folder(annotators, tmp_path):
    for module, sub in (("depth_midas", "midas"), ("depth_anything", "depth_anything")):
        with pytest.raises(PreprocessorError, match=f"{module}.*{tmp_path / sub}"):
            run_preprocessor(module, gradient(), 64, annotators=tmp_path)
        with pytest.raises(ParamError, match=str(tmp_path / sub)) as caught:
            check_unit({"enabled": True, "module": module, "model": "x"}, LOC, annotators=tmp_path)
        assert caught.value.loc == (*LOC, "module")
        assert check_unit({"enabled": True, "module": module, "model": "x"}, LOC,
                          annotators=annotators)["module"] == module.replace("depth_midas", "depth")
    (tmp_path / "midas").mkdir()
    (tmp_path / "midas" / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"pickle")  # the extension's own file
    assert find_model_folder("depth", tmp_path) is None
    with pytest.raises(ParamError, match="openpose"):
        check_unit({"enabled": True, "module": "openpose", "model": "x"}, LOC, annotators=annotators)
    assert {"depth", "depth_anything"} <= set(module_list())
    assert "depth_midas" in module_list(alias_names=True)


def test_a_depth_unit_drives_a_job(annotators, tmp_path, tiny_sd1_path):
    sd1 = load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    models = tmp_path / "models"
    write_original(build_controlnet(sd1.unet), models / "ControlNet" / "control_tiny_depth.safetensors")
    (models / "ControlNetAnnotators").symlink_to(annotators, target_is_directory=True)
    registry = ScriptRegistry([ControlNet([models / "ControlNet"])])

    def generate(units):
        params = Txt2ImgParams(prompt="a cube", width=64, height=64, steps=2, seed=5, sampler="Euler", rng="cpu")
        _, calls = registry.check_calls("txt2img", None, None,
                                        {"controlnet": {"args": units}} if units is not None else None)
        bound = registry.bind("txt2img", None, calls)
        tasks = bound.expand(GenerationTask(params, ()))
        result = txt2img(GenerationContext(model=sd1, hooks=bound.for_task(tasks[0])), params)
        bound.after_job(None)
        return result

    unit = {"enabled": True, "module": "depth_anything", "model": "control_tiny_depth", "image": b64(gradient()),
            "processor_res": 64}
    plain, controlled = generate(None), generate([unit])
    assert not torch.allclose(plain.latents, controlled.latents, atol=1e-3)
    assert "Module: depth_anything" in controlled.infotexts[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path, annotators):
    from test_api_support import LiveServer, make_data_dir

    data = make_data_dir(tmp_path_factory.mktemp("controlnet-annotators-api"), tiny_sd1_path, "tiny-sd1.safetensors")
    (data / "models" / "ControlNetAnnotators").symlink_to(annotators, target_is_directory=True)
    with LiveServer(data, ui=False) as live:
        yield live


def test_detect_and_module_list_through_the_http_api(server):
    with server.client() as client:
        modules = client.get("/controlnet/module_list").json()["module_list"]
        assert "depth" in modules and "depth_anything" in modules
        for module in ("depth_midas", "depth_anything"):
            answer = client.post("/controlnet/detect", json={"controlnet_module": module,
                                                             "controlnet_input_images": [b64(gradient())],
                                                             "controlnet_processor_res": 64})
            assert answer.status_code == 200, answer.text
            detected = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))))
            assert detected.shape[:2] == (64, 64) and detected.max() == 255
        missing = client.post("/controlnet/detect", json={"controlnet_module": "dw_openpose_full",
                                                          "controlnet_input_images": [b64(gradient())]})
        assert missing.status_code == 422 and "ControlNetAnnotators" in missing.text


# ---- DWPose (dw_openpose_full) on onnxruntime ---------------------------------------------------------------------


def _constant_onnx(path, input_shape, outputs: dict):
    """An ONNX model with DWPose's signatures: one image input, outputs that are constants (batched like the input),
    so that what the pipeline decodes from them is known."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0, axes=[1, 2, 3]),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
             helper.make_node("Reshape", ["nothing", "shape"], ["column"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero"),
             numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape")]
    graph_outputs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_value"))
        nodes.append(helper.make_node("Add", ["column", f"{name}_value"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["batch", *input_shape])],
                              graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


# keypoints (x, y) in the pose model's input (288x384) per COCO-wholebody index; the rest score 0
POSE_POINTS = {0: (144, 60), 5: (100, 120), 6: (188, 120), 92: (60, 250), 100: (70, 280)}


def write_dwpose(folder):
    det = np.zeros((1, 8400, 85))
    anchor = 6400 + 1600 + 10 * 20 + 10  # stride 32, cell (10, 10): centre (320, 320) in the 640 input
    det[0, anchor, 2:4] = np.log([400 / 32, 560 / 32])
    det[0, anchor, 4], det[0, anchor, 5] = 1.0, 0.9
    _constant_onnx(folder / "yolox_l.onnx", [3, 640, 640], {"output": det})
    simcc_x, simcc_y = np.zeros((1, 133, 576)), np.zeros((1, 133, 768))
    for index, (x, y) in POSE_POINTS.items():
        simcc_x[0, index, 2 * x] = simcc_y[0, index, 2 * y] = 1.0
    _constant_onnx(folder / "dw-ll_ucoco_384.onnx", [3, 384, 288], {"simcc_x": simcc_x, "simcc_y": simcc_y})


def test_dw_openpose_full_draws_the_skeleton_where_the_models_put_it(tmp_path):
    with pytest.raises(PreprocessorError, match=f"dw_openpose_full.*{tmp_path / 'openpose'}.*yolox_l.onnx"):
        run_preprocessor("dw_openpose_full", gradient(), 64, annotators=tmp_path)
    write_dwpose(tmp_path / "openpose")
    pose = run_preprocessor("dw_openpose_full", gradient(), 64, annotators=tmp_path)
    assert pose.shape == (64, 64, 3)
    # the box: centre (32, 32), 40x56 in the 64x64 image -> scale (52.5, 70) at 288x384 (the aspect fixed)
    def at(x, y):
        return x / 288 * 52.5 + 32 - 26.25, y / 384 * 70 + 32 - 35

    nose, left_shoulder, right_shoulder = at(*POSE_POINTS[0]), at(*POSE_POINTS[5]), at(*POSE_POINTS[6])
    assert tuple(pose[int(nose[1]), int(nose[0])]) == (255, 0, 0)  # OpenPose point 0, red
    neck = ((left_shoulder[0] + right_shoulder[0]) / 2, (left_shoulder[1] + right_shoulder[1]) / 2)
    assert tuple(pose[int(neck[1]), int(neck[0])]) == (255, 85, 0)  # point 1 (the neck DWPose lacks), orange
    assert tuple(pose[int(right_shoulder[1]), int(right_shoulder[0])]) == (255, 170, 0)  # point 2
    assert tuple(pose[int(left_shoulder[1]), int(left_shoulder[0])]) == (85, 255, 0)  # point 5
    wrist = at(*POSE_POINTS[92])  # the left hand's first point: a blue dot
    assert tuple(pose[int(wrist[1]), int(wrist[0])]) == (0, 0, 255)
    # the limb neck -> nose (dimmed to 0.6 of blue (0, 0, 255)) between them
    middle = ((neck[0] + nose[0]) / 2, (neck[1] + nose[1]) / 2)
    assert tuple(pose[int(middle[1]), int(middle[0])]) == (0, 0, 153)
    assert (pose[:, :4] == 0).all()  # nothing drawn elsewhere

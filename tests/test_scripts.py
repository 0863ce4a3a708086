"""Scripts as plug-ins (A1111's `script_name` / `script_args` / `alwayson_scripts`): the registry's checks, the
built-in "Prompts from file or textbox", and an always-on plug-in's hooks, through the real server and the UI's
request mapping."""

from __future__ import annotations

import json

import pytest
from test_api_support import LiveServer, decode_png, make_data_dir, wait_for_job

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.scripts import GenerationTask, Script, ScriptArg, ScriptRegistry
from sdwebui.scripts import builtin_scripts
from sdwebui.scripts.prompts_from_file import PromptsFromFile, line_values, parse_line

FAST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}
PFF = "prompts from file or textbox"


class Watercolor(Script):
    """A test plug-in exercising every engine hook: it appends a style to each prompt of a batch, scales every UNet
    prediction, flips the decoded images and notes itself in the infotext."""

    title = "Watercolor test"
    alwayson = True
    args = (ScriptArg("Enabled", bool, False), ScriptArg("Scale", float, 1.0, minimum=0.0, maximum=2.0))

    def __init__(self):
        self.model_calls = 0

    def before_batch(self, batch, args):
        if args[0]:
            batch.prompts[:] = [f"{prompt}, watercolor" for prompt in batch.prompts]

    def wrap_model_call(self, model, call, args):
        if not args[0]:
            return call

        def scaled(*a, **kw):
            self.model_calls += 1
            return call(*a, **kw) * args[1]

        return scaled

    def after_batch(self, batch, args):
        if args[0]:
            from PIL import ImageOps

            batch.images[:] = [ImageOps.mirror(image) for image in batch.images]
            batch.infotext["Watercolor"] = args[1]


# ---- the registry ----------------------------------------------------------------------------------------------


def test_selectable_script_args_are_checked_and_defaults_fill_the_tail():
    registry = ScriptRegistry([PromptsFromFile(), Watercolor()])
    selected, alwayson = registry.check_calls("txt2img", "PROMPTS FROM FILE OR TEXTBOX", [True], {})
    assert selected.name == PFF and selected.args == (True, False, "start", "")
    assert [call.name for call in alwayson] == ["watercolor test"] and alwayson[0].args == (False, 1.0)
    with pytest.raises(ParamError) as error:
        registry.check_calls("txt2img", "no such script", [], {})
    assert error.value.loc == ("script_name",) and "not found" in error.value.message
    with pytest.raises(ParamError) as error:
        registry.check_calls("txt2img", PFF, [False, False, "middle", "x"], {})
    assert error.value.loc == ("script_args", 2) and "start, end" in error.value.message
    with pytest.raises(ParamError) as error:
        registry.check_calls("txt2img", PFF, [False, False, "start", "x", "extra"], {})
    assert error.value.loc == ("script_args",)
    with pytest.raises(ParamError) as error:
        registry.check_calls("txt2img", PFF, ["yes"], {})
    assert error.value.loc == ("script_args", 0)


def test_alwayson_scripts_as_a1111_takes_them():
    registry = ScriptRegistry([PromptsFromFile(), Watercolor()])
    # Extra arguments are ignored (A1111 takes the first args_to - args_from), names are case-insensitive.
    _, calls = registry.check_calls("txt2img", None, [], {"Watercolor Test": {"args": [True, 0.5, "extra"]}})
    assert calls[0].args == (True, 0.5)
    with pytest.raises(ParamError) as error:
        registry.check_calls("txt2img", None, [], {"controlnet": {"args": []}})
    assert error.value.loc == ("alwayson_scripts", "controlnet")
    with pytest.raises(ParamError) as error:
        registry.check_calls("txt2img", None, [], {PFF: {"args": []}})
    assert "selectable script" in error.value.message
    with pytest.raises(ParamError) as error:
        registry.check_calls("txt2img", None, [], {"watercolor test": {"args": [True, 5.0]}})
    assert error.value.loc == ("alwayson_scripts", "watercolor test", "args", 1)
    with pytest.raises(ValueError):
        registry.register(Watercolor())  # one script per name


# ---- prompts from file -----------------------------------------------------------------------------------------


def test_lines_parse_as_a1111_cmdargs():
    assert parse_line('--prompt "a red cat" on a mat --steps 10 --seed 5 --sampler_name "Euler a" --n_iter 2') == {
        "prompt": "a red cat on a mat", "steps": 10, "seed": 5, "sampler": "Euler a", "batch_count": 2}
    assert parse_line("--negative_prompt ugly blurry --cfg_scale 4.5 --tiling true --width 64") == {
        "negative_prompt": "ugly blurry", "cfg_scale": 4.5, "tiling": True, "width": 64}
    assert line_values("a cat -- a dog") == {"prompt": "a cat -- a dog"}  # not options: a prompt
    assert line_values("--sampler_index 0")["sampler"] == "DPM++ 2M"  # A1111's position in its sampler list
    for line, message in [("--steps ten", "--steps: not a valid value"), ("--colour red", "unknown option --colour"),
                          ("--seed", "missing a value"), ("--outpath_samples /tmp", "not supported"),
                          ("--styles x", "not supported")]:
        with pytest.raises(ValueError, match=message):
            line_values(line)
    assert line_values("--restore_faces false --prompt x") == {"prompt": "x", "restore_faces": False}
    assert line_values("--restore_faces true")["restore_faces"] is True


def expand(text, iterate=False, same_seed=False, position="start", **params):
    base = GenerationTask(Txt2ImgParams(**{"prompt": "", "width": 64, "height": 64, **params}))
    return PromptsFromFile().before_job(base, (iterate, same_seed, position, text))


def test_each_line_is_a_job_with_its_options():
    tasks = expand("a red circle\n\n  --prompt a blue square --steps 3 --seed 9  \n--sd_model other", seed=4)
    assert [(t.params.prompt, t.params.steps, t.params.seed) for t in tasks] == [
        ("a red circle", 20, 4), ("a blue square", 3, 9), ("", 20, 4)]
    assert tasks[2].checkpoint == "other" and tasks[1].label == "line 3"


def test_prompt_position_and_seed_iteration_as_a1111():
    start = expand("circle\nsquare", prompt="tab", seed=10, iterate=True, batch_size=2, batch_count=3)
    assert [t.params.prompt for t in start] == ["circle tab", "square tab"]
    assert [t.params.seed for t in start] == [10, 16]  # + batch size x batch count per line
    end = expand("circle", position="end", prompt="tab")
    assert end[0].params.prompt == "tab circle"
    same = expand("a\nb", same_seed=True)
    assert same[0].params.seed == same[1].params.seed != -1  # one random seed for the list
    assert [t.params.seed for t in expand("a\nb")] == [-1, -1]  # each line its own random seed


def test_a_bad_line_names_its_number():
    with pytest.raises(ParamError) as error:
        expand("fine\n--steps 0")
    assert error.value.loc == ("script_args", 3) and error.value.message.startswith("line 2: steps:")
    with pytest.raises(ParamError) as error:
        expand("fine\n--sampler_name Nope")
    assert error.value.message.startswith("line 2: ") and "unknown sampler" in error.value.message
    with pytest.raises(ParamError) as error:
        expand("\n  \n")
    assert "no prompts" in error.value.message


# ---- through the server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def watercolor():
    return Watercolor()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path, watercolor):
    data = make_data_dir(tmp_path_factory.mktemp("scripts"), tiny_sd1_path, "tiny-sd1.safetensors")
    with LiveServer(data, scripts=[watercolor], ui=False) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def test_scripts_and_script_info_list_the_registered_scripts(client):
    listed = client.get("/sdapi/v1/scripts").json()
    assert PFF in listed["txt2img"] and PFF in listed["img2img"] and "watercolor test" in listed["txt2img"]
    info = {(item["name"], item["is_img2img"]): item for item in client.get("/sdapi/v1/script-info").json()}
    pff = info[(PFF, False)]
    assert pff["is_alwayson"] is False and [arg["label"] for arg in pff["args"]] == [
        "Iterate seed every line", "Use same random seed for all lines", "Insert prompts at the",
        "List of prompt inputs"]
    assert pff["args"][2]["choices"] == ["start", "end"] and pff["args"][2]["value"] == "start"
    assert info[("watercolor test", True)]["args"][1] == {"label": "Scale", "value": 1.0, "minimum": 0.0,
                                                          "maximum": 2.0, "step": None, "choices": None}


def test_prompts_from_file_over_the_a1111_api(client):
    lines = "a red circle\n--prompt a blue square --steps 3 --seed 9 --n_iter 2"
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "", "seed": 5, "script_name": PFF,
                                                      "script_args": [False, False, "start", lines]})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3
    assert info["all_prompts"] == ["a red circle", "a blue square", "a blue square"]
    assert info["all_seeds"] == [5, 9, 10]
    assert [decode_png(image).info["parameters"].split("\n")[0] for image in body["images"]] == info["all_prompts"]
    assert "Steps: 3" in info["infotexts"][1] and "Steps: 2" in info["infotexts"][0]


def test_a_bad_script_request_is_422_naming_the_argument(client, server):
    jobs_before = server.services.store.jobs(limit=1000)
    for body, field in [
        ({"script_name": "nope"}, "script_name"),
        ({"script_name": PFF, "script_args": [False, False, "start", "--steps 0"]}, "script_args.3"),
        ({"script_name": PFF, "script_args": [1.5]}, "script_args.0"),
        ({"alwayson_scripts": {"watercolor test": {"args": [True, "x"]}}}, "alwayson_scripts.watercolor test.args.1"),
    ]:
        response = client.post("/sdapi/v1/txt2img", json={**FAST, **body})
        assert response.status_code == 422 and response.json()["field"] == field, response.text
    assert server.services.store.jobs(limit=1000) == jobs_before


def test_an_alwayson_plugin_runs_its_hooks(client, watercolor):
    plain = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cube", "seed": 3}).json()
    assert "Watercolor" not in json.loads(plain["info"])["infotexts"][0]  # enabled = False by default
    calls_before = watercolor.model_calls
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cube", "seed": 3, "alwayson_scripts": {
        "Watercolor test": {"args": [True, 0.5]}}}).json()
    info = json.loads(body["info"])
    assert info["all_prompts"] == ["a cube, watercolor"]
    assert info["infotexts"][0].startswith("a cube, watercolor\n") and "Watercolor: 0.5" in info["infotexts"][0]
    assert info["extra_generation_params"]["Watercolor"] == "0.5"
    assert watercolor.model_calls - calls_before >= 2  # at least one UNet call per step of the two
    assert decode_png(body["images"][0]).tobytes() != decode_png(plain["images"][0]).tobytes()


def test_native_jobs_take_scripts_too(client):
    response = client.post("/api/v1/jobs", json={"prompt": "", "width": 64, "height": 64, "steps": 2, "seed": 1,
                                                 "script_name": "Prompts from file or textbox",
                                                 "script_args": [True, False, "start", "one\ntwo"]})
    assert response.status_code == 202, response.text
    view = wait_for_job(client, response.json()["id"], timeout=120)
    assert view["status"] == "done" and view["result"]["seeds"] == [1, 2]
    assert view["result"]["prompts"] == ["one", "two"]
    response = client.post("/api/v1/jobs", json={"prompt": "x", "script_name": "nope"})
    assert response.status_code == 422 and response.json()["field"] == "script_name"


def test_img2img_takes_prompts_from_file(client):
    from PIL import Image

    from sdwebui.server.payloads import encode_png

    response = client.post("/sdapi/v1/img2img", json={
        **FAST, "init_images": [encode_png(Image.new("RGB", (64, 64), (200, 30, 30)))], "denoising_strength": 0.5,
        "script_name": PFF, "script_args": [False, False, "start", "a\nb"]})
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["all_prompts"] == ["a", "b"]


def test_builtin_scripts_have_unique_titles_and_declared_args():
    registry = ScriptRegistry(builtin_scripts())
    for tab in ("txt2img", "img2img"):
        for script in registry.scripts(tab):
            assert script.title and script.args
            for arg in script.args:
                arg.check(arg.default, ("script_args", 0))  # every default passes its own check

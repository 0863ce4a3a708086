"""Dynamic prompts (the sd-dynamic-prompts extension's language and its always-on script): the template language as
tables for fixed seeds, wildcard files (subfolders, nesting, comments, globs), combinatorial expansion, and the
script through the real server (A1111 and native API), the CLI and the UI's request mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from test_api_support import LiveServer, decode_png, make_data_dir, wait_for_job

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.scripts import GenerationTask, ScriptRegistry
from sdwebui.prompts.dynamic import DynamicPromptError, Resolver, WildcardLibrary, parse
from sdwebui.scripts.dynamic_prompts import Combinations, DynamicPrompts

FAST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}
NATIVE = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler"}
DP = "dynamic prompts v2.17.1"


def write_wildcards(root: Path) -> Path:
    folder = root / "wildcards"
    (folder / "people").mkdir(parents=True, exist_ok=True)
    (folder / "season.txt").write_text("# the four seasons\nsummer\nautumn\n\n  winter  \nspring\nsummer\n")
    (folder / "people" / "europe.txt").write_text("Finnish\nDutch\n")
    (folder / "people" / "all.txt").write_text("__people/europe__\n{Martian|Venusian}\n")
    (folder / "colours-warm.txt").write_text("red\nyellow\n")
    (folder / "colours-cold.txt").write_text("blue\n")
    (folder / "loop.txt").write_text("a __loop__\n")
    (folder / "shape.txt").write_text("circle\nsquare\n")
    return folder


@pytest.fixture(scope="module")
def resolver(tmp_path_factory) -> Resolver:
    return Resolver(WildcardLibrary(write_wildcards(tmp_path_factory.mktemp("dp"))))


# ---- the language ------------------------------------------------------------------------------------------------


def test_wildcard_files_skip_comments_and_blanks_and_are_sorted_and_deduplicated(resolver):
    library = resolver.library
    assert library.values("season") == ("autumn", "spring", "summer", "winter")
    assert library.values("people/europe") == ("Dutch", "Finnish")
    assert library.values("people\\europe") == ("Dutch", "Finnish")  # the extension's clean_wildcard
    assert library.values("colours*") == ("blue", "red", "yellow")  # a glob takes every file it matches
    assert library.values("nope") is None and library.values("../wildcards/season") is None
    assert library.names() == ["colours-cold", "colours-warm", "loop", "people/all", "people/europe", "season",
                               "shape"]


@pytest.mark.parametrize("template, seeds, expected", [
    # a table for fixed seeds: the same seed always gives the same prompt (regression values)
    ("a {cat|dog}", [0, 1, 2, 3], ["a dog", "a dog", "a cat", "a dog"]),
    ("__season__ is coming", [0, 1, 2, 3], ["winter is coming", "spring is coming", "autumn is coming",
                                            "spring is coming"]),
    ("{2$$a|b|c}", [0, 1, 2, 3], ["c,a", "b,c", "a,b", "b,a"]),
    ("{2$$ and $$a|b|c}", [0, 1], ["c and a", "b and c"]),
    ("__people/all__", [0, 1, 2, 3, 4], ["Martian", "Dutch", "Dutch", "Dutch", "Finnish"]),  # nested, then a variant
    ("{1-2$$__shape__}", [0, 1, 2], ["square,circle", "square", "circle"]),
])
def test_choices_for_fixed_seeds(resolver, template, seeds, expected):
    assert [resolver.resolve(template, seed) for seed in seeds] == expected
    assert [resolver.resolve(template, seed) for seed in seeds] == expected  # again: a function of the seed


@pytest.mark.parametrize("template, rule", [
    ("{2$$a|b|c}", lambda text: len(set(text.split(","))) == 2 and set(text.split(",")) <= {"a", "b", "c"}),
    ("{0::never|1::always}", lambda text: text == "always"),  # a zero weight is never drawn
    ("{-2$$a|b|c}", lambda text: 1 <= len(text.split(",")) <= 2),
    ("{1-$$a|b|c}", lambda text: 1 <= len(text.split(",")) <= 3),
    ("{4$$a|b|c}", lambda text: sorted(text.split(",")) == ["a", "b", "c"]),  # no more than there are
    ("{2$$__season__}", lambda text: len(set(text.split(","))) == 2),  # distinct lines of the file
    ("__colours*__", lambda text: text in ("blue", "red", "yellow")),
    ("{__people/all__|x}", lambda text: text in ("Finnish", "Dutch", "Martian", "Venusian", "x")),
    ("(masterpiece:1.2) [a|b] <lora:x:0.5> AND c", lambda text: text == "(masterpiece:1.2) [a|b] <lora:x:0.5> AND c"),
    ("an \\{escaped\\} brace", lambda text: text == "an \\{escaped\\} brace"),
])
def test_every_seed_gives_a_prompt_the_syntax_allows(resolver, template, rule):
    for seed in range(40):
        assert rule(resolver.resolve(template, seed)), (template, seed, resolver.resolve(template, seed))


def test_weights_follow_their_ratio(resolver):
    drawn = [resolver.resolve("{1::a|9::b}", seed) for seed in range(1000)]
    assert 40 < drawn.count("a") < 180  # about 100 of 1000


@pytest.mark.parametrize("template, expected", [
    ("a {cat|dog} in __season__", ["a cat in autumn", "a cat in spring", "a cat in summer", "a cat in winter",
                                   "a dog in autumn", "a dog in spring", "a dog in summer", "a dog in winter"]),
    ("{2$$a|b|c}", ["a,b", "a,c", "b,c"]),
    ("{1-2$$x|y}", ["x", "y", "x,y"]),
    ("__people/all__", ["Dutch", "Finnish", "Martian", "Venusian"]),  # lines sorted: "__people..." < "{Martian..."
    ("plain", ["plain"]),
])
def test_combinations_in_the_extensions_order(resolver, template, expected):
    assert resolver.combinations(template) == expected
    assert resolver.combinations(template, 2) == expected[:2]


@pytest.mark.parametrize("template, message, wildcard", [
    ("a __nope__", "wildcard __nope__ not found", "nope"),
    ("__people/nobody__", "__people/nobody__ not found", "people/nobody"),
    ("{a|__missing__}", "__missing__ not found", "missing"),
    ("__loop__", "__loop__ names itself", None),
    ("a {cat|dog", "unbalanced '{'", None),
    ("a cat}", "unbalanced '}'", None),
])
def test_templates_that_cannot_be_resolved(resolver, template, message, wildcard):
    with pytest.raises(DynamicPromptError) as error:
        resolver.check(template)
    assert message in str(error.value) and error.value.wildcard == wildcard


def test_a_nested_missing_wildcard_is_found_before_any_draw(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "outer.txt").write_text("fine\n__inner__\n")
    with pytest.raises(DynamicPromptError) as error:
        Resolver(WildcardLibrary(folder)).check("__outer__")
    assert error.value.wildcard == "inner"


def test_an_edited_wildcard_file_is_read_again(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "w.txt").write_text("one\n")
    library = WildcardLibrary(folder)
    assert library.values("w") == ("one",)
    (folder / "w.txt").write_text("two\nthree\n")
    assert library.values("w") == ("three", "two")


def test_yaml_and_json_wildcard_files_as_the_extension_reads_them(tmp_path):
    folder = tmp_path / "wildcards"
    (folder / "collections").mkdir(parents=True)
    (folder / "example.yaml").write_text(
        "clothing:\n  - T-shirt\n  - Pants\nartists:\n  dutch:\n    - Piet Mondrian\n    - 2::Rembrandt\n"
        "  1234: 5678\n  flurp: 12345\nempty: []\n")
    (folder / "collections" / "colours.json").write_text(
        '{"colours": {"warm": ["red", {"text": "orange", "weight": 2}], "cold": "blue"}}')
    (folder / "broken.yaml").write_text("a: [unclosed\n")
    library = WildcardLibrary(folder)
    assert library.names() == ["artists/dutch", "clothing", "collections/colours/cold", "collections/colours/warm"]
    assert library.values("clothing") == ("Pants", "T-shirt")
    assert library.values("artists/dutch") == ("Piet Mondrian", "Rembrandt")  # the weight prefix dropped
    assert library.values("collections/colours/warm") == ("orange", "red")
    assert library.values("collections/colours/*") == ("blue", "orange", "red")
    assert library.values("artists/flurp") is None and library.values("empty") is None
    resolver = Resolver(library)
    assert resolver.combinations("__clothing__ by __artists/dutch__") == [
        "Pants by Piet Mondrian", "Pants by Rembrandt", "T-shirt by Piet Mondrian", "T-shirt by Rembrandt"]
    (folder / "example.yaml").write_text("clothing:\n  - Hat\n")  # edits are read again
    assert library.values("clothing") == ("Hat",)


def test_parse_keeps_weights_bounds_and_separator():
    (variant,) = parse("{2-3$$ + $$0.5::a|b}")
    assert (variant.low, variant.high, variant.separator) == (2, 3, " + ")
    assert [weight for weight, _ in variant.options] == [0.5, 1.0]


# ---- the script ----------------------------------------------------------------------------------------------


def defaults(**changes):
    args = [arg.default for arg in DynamicPrompts.args]
    for index, value in changes.items():
        args[int(index.lstrip("a"))] = value
    return tuple(args)


def test_the_script_checks_wildcards_before_the_job(resolver):
    script = DynamicPrompts(resolver.library)
    task = GenerationTask(Txt2ImgParams(prompt="a __nope__ cat"))
    with pytest.raises(ParamError) as error:
        script.before_job(task, defaults())
    assert error.value.loc == ("prompt",) and "__nope__" in error.value.message
    with pytest.raises(ParamError) as error:
        script.before_job(GenerationTask(Txt2ImgParams(prompt="x", negative_prompt="__gone__")), defaults())
    assert error.value.loc == ("negative_prompt",)
    assert script.before_job(task, defaults(a0=False)) == [task]  # disabled: left as written
    with pytest.raises(ParamError) as error:
        script.before_job(GenerationTask(Txt2ImgParams(prompt="x")), defaults(a3=True))
    assert error.value.loc == ("alwayson_scripts", DP, "args", 3) and "Magic prompt" in error.value.message


def test_combinatorial_runs_hold_every_combination_in_batches(resolver):
    script = DynamicPrompts(resolver.library)
    params = Txt2ImgParams(prompt="a {cat|dog} in __season__", negative_prompt="{ugly|blurry}", seed=10,
                           batch_size=3, batch_count=7)
    tasks = script.before_job(GenerationTask(params), defaults(a1=True))
    # 2 x 4 prompts crossed with 2 negative prompts = 16 images: 5 batches of 3, then one of 1
    assert [(t.params.batch_size, t.params.batch_count, t.params.seed) for t in tasks] == [(3, 5, 10), (1, 1, 25)]
    prompts = [p for t in tasks for p in t.script_data.prompts]
    negatives = [n for t in tasks for n in t.script_data.negative_prompts]
    assert len(set(zip(prompts, negatives))) == 16
    assert prompts[:2] == ["a cat in autumn", "a cat in autumn"] and negatives[:2] == ["ugly", "blurry"]
    assert all(t.params.prompt == params.prompt for t in tasks)  # the template stays for the infotext
    limited = script.before_job(GenerationTask(params), defaults(a1=True, a15=3))
    assert [(t.params.batch_size, t.params.batch_count) for t in limited] == [(3, 1)]
    fixed = script.before_job(GenerationTask(params), defaults(a1=True, a15=2, a2=2, a10=True))
    assert [t.params.seed for t in fixed] == [10, 10, 11, 11]  # a seed per repetition
    assert isinstance(fixed[0].script_data, Combinations)


def test_too_many_combinations_is_a_422_at_max_generations(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "n.txt").write_text("\n".join(str(i) for i in range(30)))
    script = DynamicPrompts(folder)
    with pytest.raises(ParamError) as error:
        script.before_job(GenerationTask(Txt2ImgParams(prompt="__n__ __n__ __n__")), defaults(a1=True))
    assert error.value.loc == ("alwayson_scripts", DP, "args", 15)


def test_the_extensions_title_and_a_short_name_both_find_it(resolver):
    registry = ScriptRegistry([DynamicPrompts(resolver.library)])
    _, calls = registry.check_calls("txt2img", None, None, {"Dynamic Prompts": {"args": [True, True]}})
    assert calls[0].name == DP and calls[0].args[:3] == (True, True, 1)
    _, calls = registry.check_calls("img2img", None, None, {"Dynamic Prompts v2.17.1": {"args": [False]}})
    assert calls[0].args[0] is False


# ---- through the server, the CLI and the UI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("dynamic"), tiny_sd1_path, "tiny-sd1.safetensors")
    write_wildcards(data)
    with LiveServer(data, ui=False) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def test_each_image_of_a_batch_draws_with_its_seed_and_keeps_the_template(client):
    body = {**FAST, "prompt": "a {red|blue|green} __shape__", "negative_prompt": "{ugly|blurry}", "seed": 100,
            "batch_size": 4}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    prompts = info["all_prompts"]
    assert all("{" not in p and "__" not in p for p in prompts) and len(set(prompts)) > 1
    resolver = Resolver(WildcardLibrary(None))
    assert [p.split()[1] for p in prompts] == [resolver.resolve("{red|blue|green}", seed) for seed in range(100, 104)]
    infotext = info["infotexts"][0]
    assert infotext.startswith(prompts[0] + "\nNegative prompt: " + info["all_negative_prompts"][0] + "\n")
    assert "Template: a {red|blue|green} __shape__" in infotext and "Negative Template: {ugly|blurry}" in infotext
    image = decode_png(response.json()["images"][1])
    assert image.info["parameters"].split("\n")[0] == prompts[1]
    again = json.loads(client.post("/sdapi/v1/txt2img", json={**body, "batch_size": 1, "seed": 101}).json()["info"])
    assert again["all_prompts"] == [prompts[1]]  # the same seed, the same prompt


def test_a_missing_wildcard_is_a_422_naming_it(client, server):
    jobs_before = server.services.store.jobs(limit=1000)
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a __nowhere__ cat"})
    assert response.status_code == 422 and response.json()["field"] == "prompt", response.text
    assert "__nowhere__" in response.text
    response = client.post("/api/v1/jobs", json={**NATIVE, "prompt": "x", "negative_prompt": "__nowhere__"})
    assert response.status_code == 422 and response.json()["field"] == "negative_prompt", response.text
    disabled = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a __nowhere__ cat", "alwayson_scripts": {
        "Dynamic Prompts v2.17.1": {"args": [False]}}})
    assert json.loads(disabled.json()["info"])["all_prompts"] == ["a __nowhere__ cat"]
    assert len(server.services.store.jobs(limit=1000)) == len(jobs_before) + 1  # only the disabled one ran


def test_combinatorial_generation_through_the_a1111_api(client):
    response = client.post("/sdapi/v1/txt2img", json={
        **FAST, "prompt": "a {red|blue} __shape__", "seed": 7, "batch_size": 3, "n_iter": 5,
        "alwayson_scripts": {"Dynamic Prompts v2.17.1": {"args": [True, True]}}})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_prompts"] == ["a red circle", "a red square", "a blue circle", "a blue square"]
    assert info["all_seeds"] == [7, 8, 9, 10]
    assert len(response.json()["images"]) == 4  # the batch count is not used
    assert all("Template: a {red|blue} __shape__" in text for text in info["infotexts"])


def test_native_jobs_and_img2img_resolve_too(client):
    response = client.post("/api/v1/jobs", json={**NATIVE, "prompt": "__people/europe__", "seed": 3, "batch_size": 2})
    assert response.status_code == 202, response.text
    view = wait_for_job(client, response.json()["id"], timeout=120)
    assert view["status"] == "done" and set(view["result"]["prompts"]) <= {"Dutch", "Finnish"}
    from sdwebui.server.payloads import encode_png

    response = client.post("/sdapi/v1/img2img", json={
        **FAST, "init_images": [encode_png(Image.new("RGB", (64, 64), (20, 90, 200)))], "denoising_strength": 0.5,
        "prompt": "{2$$a|b|c}", "seed": 1})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_prompts"] == [Resolver(WildcardLibrary(None)).resolve("{2$$a|b|c}", 1)]
    assert "Template: {2$$a|b|c}" in info["infotexts"][0]


def test_the_cli_resolves_wildcards_from_its_folder(tmp_path, tiny_sd1_path, capsys):
    from sdwebui.cli import main

    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "tiny-sd1.safetensors")
    folder = write_wildcards(tmp_path / "elsewhere")
    common = ["--steps", "2", "--width", "64", "--height", "64", "--device", "cpu", "--data-dir", str(data),
              "--seed", "5", "--out", str(tmp_path / "out")]
    assert main(["txt2img", "a __shape__", "--wildcards-dir", str(folder), "--combinatorial", *common]) == 0
    paths = [Path(line) for line in capsys.readouterr().out.split()]
    prompts = [Image.open(path).info["parameters"].split("\n")[0] for path in paths]
    assert prompts == ["a circle", "a square"]
    assert main(["txt2img", "a __shape__", *common]) == 2  # not in <data-dir>/wildcards
    assert "__shape__" in capsys.readouterr().err

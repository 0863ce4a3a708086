"""Each generation parameter is declared once (`pipelines.params`); these tests prove the interfaces made from
the declarations agree with them, and with A1111 where A1111's names matter: the `/sdapi/v1` request bodies, the
native job bodies, the CLI's flags, the UI's controls, and the infotext (written and read back)."""

from __future__ import annotations


import pytest

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.params import Txt2ImgParams, param_specs, settings_defaults, spec_of
from sdwebui.server.a1111.schemas import Img2ImgRequest, Txt2ImgRequest
from sdwebui.server.native import Img2ImgJob, Txt2ImgJob

# A1111 v1.10's request fields (`StableDiffusionTxt2ImgProcessingAPI` / `...Img2Img...`), as its /docs lists them.
A1111_TXT2IMG = {
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
    "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width",
    "height", "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength",
    "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings",
    "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks",
    "firstpass_image", "comments", "enable_hr", "firstphase_width", "firstphase_height", "hr_scale",
    "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name",
    "hr_scheduler", "hr_prompt", "hr_negative_prompt", "force_task_id", "sampler_index", "script_name",
    "script_args", "send_images", "save_images", "alwayson_scripts", "infotext",
}
A1111_IMG2IMG_OWN = {
    "init_images", "resize_mode", "image_cfg_scale", "mask", "mask_blur_x", "mask_blur_y", "mask_blur",
    "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert",
    "initial_noise_multiplier", "latent_mask", "include_init_images",
}
A1111_TXT2IMG_ONLY = {"enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
                      "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name",
                      "hr_scheduler", "hr_prompt", "hr_negative_prompt", "firstpass_image"}


def test_the_a1111_request_bodies_have_a1111s_fields_and_defaults():
    assert set(Txt2ImgRequest.model_fields) == A1111_TXT2IMG
    assert set(Img2ImgRequest.model_fields) == (A1111_TXT2IMG - A1111_TXT2IMG_ONLY) | A1111_IMG2IMG_OWN
    defaults = Txt2ImgRequest()
    # A1111's API defaults, which differ from its UI's.
    assert (defaults.steps, defaults.sampler_name, defaults.sampler_index, defaults.denoising_strength) == (
        50, None, "Euler", 0.75)
    assert (defaults.seed_resize_from_w, defaults.width, defaults.hr_upscaler, defaults.tiling) == (-1, 512, None, None)
    img = Img2ImgRequest()
    assert (img.inpainting_fill, img.inpaint_full_res, img.inpaint_full_res_padding, img.inpainting_mask_invert) == (
        0, True, 0, 0)


def test_the_native_bodies_have_every_parameter_by_its_engine_name():
    for model, cls in ((Txt2ImgJob, Txt2ImgParams), (Img2ImgJob, Img2ImgParams)):
        names = {spec.name for spec in param_specs(cls)}
        assert names <= set(model.model_fields)
        for spec in param_specs(cls):
            field = model.model_fields[spec.name]
            if spec.setting or spec.nullable:
                assert field.default is None  # the setting, or the sampler's own
            else:
                assert field.default == spec.default
    assert "enable_hr" not in Img2ImgJob.model_fields  # img2img does not take what it would refuse
    assert Img2ImgParams(prompt="").denoising_strength == 0.75 and Txt2ImgParams().denoising_strength == 0.7


def test_bounds_hold_in_every_interface():
    from pydantic import ValidationError

    for spec in param_specs(Txt2ImgParams):
        if spec.kind is not int or spec.maximum is None:
            continue
        with pytest.raises(ParamError) as error:
            Txt2ImgParams(**{spec.name: int(spec.maximum) + 1})
        assert error.value.field == spec.name
        with pytest.raises(ValidationError):
            Txt2ImgJob(**{spec.name: int(spec.maximum) + 1})
        if spec.a1111_name:
            with pytest.raises(ValidationError):
                Txt2ImgRequest(**{spec.a1111_name: int(spec.maximum) + 1})


def test_the_cli_has_a_flag_per_parameter():
    from sdwebui.cli import build_parser, param_values

    parser = build_parser()
    args = parser.parse_args(["txt2img", "a cat"])
    assert param_values(args, Txt2ImgParams) == {}  # nothing given: everything left to settings and defaults
    args = parser.parse_args(["txt2img", "a cat", "--steps", "7", "--hr-scale", "1.5", "--enable-hr", "--rng", "cpu",
                              "--ensd", "31337", "-n", "ugly", "--cfg-scale", "4"])
    assert param_values(args, Txt2ImgParams) == {"steps": 7, "hr_scale": 1.5, "enable_hr": True, "rng": "cpu",
                                                 "eta_noise_seed_delta": 31337, "negative_prompt": "ugly",
                                                 "cfg_scale": 4.0}
    with pytest.raises(SystemExit):
        parser.parse_args(["txt2img", "x", "--rng", "tpu"])  # choices come from the declaration


def test_settings_fill_only_what_a_request_left_out():
    settings = {"CLIP_stop_at_last_layers": 2, "randn_source": "CPU", "eta_noise_seed_delta": 7, "eta_ancestral": 1.0,
                "eta_ddim": 0.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0, "sigma_min": 0.0,
                "sigma_max": 0.0, "rho": 0.0, "always_discard_next_to_last_sigma": False, "emphasis": "No norm"}
    filled = settings_defaults(Txt2ImgParams, {"clip_skip": 3}, settings, {"eta": 1.0})
    assert filled == {"rng": "cpu", "eta_noise_seed_delta": 7, "emphasis": "No norm"}  # clip_skip was given
    # A sampler option that differs from the sampler's own default is taken; equal ones are left to the sampler.
    assert settings_defaults(Txt2ImgParams, {}, {**settings, "eta_ancestral": 0.5}, {"eta": 1.0})["eta"] == 0.5
    assert "eta" not in settings_defaults(Txt2ImgParams, {}, {**settings, "eta_ancestral": 0.5}, {})


def test_the_ui_controls_follow_the_declarations(tmp_path):
    """The txt2img tab's parameter controls have the declared label, default and a range inside the bounds."""
    gr = pytest.importorskip("gradio")

    from sdwebui.app import build_services
    from sdwebui.config import Paths
    from sdwebui.server.config import ServerConfig
    from sdwebui.ui import txt2img
    from sdwebui.ui.fields import TokenCounter

    services = build_services(ServerConfig(paths=Paths.from_flags(data_dir=tmp_path), preload=False))
    try:
        with gr.Blocks():
            tab = txt2img.build(services, TokenCounter())
    finally:
        services.close()
    checked = 0
    for name, control in tab.fields.items():
        if name not in {spec.name for spec in param_specs(Txt2ImgParams)} or not isinstance(
                control, (gr.Slider, gr.Number, gr.Checkbox)):
            continue
        spec = spec_of(Txt2ImgParams, name)
        if name != "enable_hr":
            assert control.label == spec.label, name
        assert control.value == spec.default, name
        if isinstance(control, gr.Slider):
            assert spec.minimum is None or control.minimum >= spec.minimum, name
            assert spec.maximum is None or control.maximum <= spec.maximum, name
        checked += 1
    assert checked >= 15
    assert "script_name" in tab.names and any(name.startswith("script:") for name in tab.names)

"""A1111's "Outpainting mk2" (`scripts/outpainting_mk_2.py`, v1.10), img2img only: the image grows one side at a
time; each new border starts as noise shaped like the image's own spectrum and coloured like it (g-diffuser's
`get_matched_noise`), and is inpainted.

Arguments, in A1111's order (what `script_args` carries): the info note (any value, ignored), pixels to expand
(8-256), mask blur (0-64), outpainting direction (a list of "left", "right", "up", "down"), fall-off exponent
(`noise_q`, 0-4), color variation (0-1).

As A1111: the canvas is rounded up to a multiple of 64 in all and the rounding shared out between the sides that
grow; the sides run in the order left, right, up, down, each as one img2img batch of `batch_size` images (masked
content "original", whole picture, mask blur x 4 along the axes that grow) whose size is the job's width or
height along the growing axis (at most) and the image's across it; batch count repeats it all from the original
image; the seed is the job's for every pass (a random one per pass when it is -1); the results are saved with the first
pass's infotext; a grid of them comes first when there are several and grids are shown.

Where we differ: A1111 also gives the sampler a "latent mask" a little smaller than the image mask; here the
latent blend follows the blurred image mask, as an inpainting job's does. Histogram matching is our numpy port of
scikit-image's `match_histograms` (the same quantile mapping).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.jobs import JobScript, ScriptJob, add_result
from sdwebui.pipelines.masking import flatten
from sdwebui.pipelines.script_args import InfoArg
from sdwebui.pipelines.scripts import GenerationTask, JobOutcome, ScriptArg
from sdwebui.scripts.poor_mans_outpainting import DIRECTIONS, expansion

PIXELS_INDEX = 1


def match_histograms(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """scikit-image's `exposure.match_histograms(source, template, channel_axis=1)` for float (N, C) arrays: each
    channel's values mapped so their cumulative distribution follows the template's."""
    matched = np.empty_like(source, dtype=np.float64)
    for channel in range(source.shape[1]):
        src, tmpl = source[:, channel], template[:, channel]
        src_values, src_indices, src_counts = np.unique(src, return_inverse=True, return_counts=True)
        tmpl_values, tmpl_counts = np.unique(tmpl, return_counts=True)
        src_quantiles = np.cumsum(src_counts) / src.size
        tmpl_quantiles = np.cumsum(tmpl_counts) / tmpl.size
        matched[:, channel] = np.interp(src_quantiles, tmpl_quantiles, tmpl_values)[src_indices.reshape(-1)]
    return matched


def _fft2(data: np.ndarray) -> np.ndarray:
    """A1111's helper: per channel, an orthonormal 2-D FFT with the shifts before and after."""
    out = np.zeros(data.shape, dtype=np.complex128)
    for c in range(data.shape[2]):
        out[:, :, c] = np.fft.ifftshift(np.fft.fft2(np.fft.fftshift(data[:, :, c]), norm="ortho"))
    return out


def _ifft2(data: np.ndarray) -> np.ndarray:
    out = np.zeros(data.shape, dtype=np.complex128)
    for c in range(data.shape[2]):
        out[:, :, c] = np.fft.ifftshift(np.fft.ifft2(np.fft.fftshift(data[:, :, c]), norm="ortho"))
    return out


def _window(width: int, height: int, std: float = 3.14) -> np.ndarray:
    """A1111's `_get_gaussian_window(..., mode=1)` (not a Gaussian, as its comment says)."""
    scale_x = float(width / min(width, height))
    scale_y = float(height / min(width, height))
    x = (np.arange(width) / width * 2.0 - 1.0) * scale_x
    y = (np.arange(height) / height * 2.0 - 1.0) * scale_y
    return (1 / ((x[:, None] ** 2 + 1.0) * (y[None, :] ** 2 + 1.0))) ** (std / 3.14)


def matched_noise(src: np.ndarray, mask_rgb: np.ndarray, noise_q: float = 1.0,
                  color_variation: float = 0.05) -> np.ndarray:
    """A1111's `get_matched_noise` (from g-diffuser): `src` (H, W, 3) in [0, 1] with the masked part (`mask_rgb`
    1) replaced by noise whose spectrum follows the unmasked image's and whose histogram matches it. The noise
    generator's seed is fixed (0), as A1111's, so the result follows the job's seed alone."""
    width, height, channels = src.shape
    mask_grey = np.sum(mask_rgb, axis=2) / 3.0
    img_mask = mask_grey > 1e-6
    ref_mask = mask_grey < 1e-3

    windowed = src * (1.0 - mask_grey[:, :, None])
    peak = np.max(windowed)
    if peak > 0:  # A1111 divides by it as it is (an all-black image gives NaNs there)
        windowed = windowed / peak
    windowed = windowed + np.average(src) * mask_rgb
    src_fft = _fft2(windowed)
    src_dist = np.absolute(src_fft)
    with np.errstate(divide="ignore", invalid="ignore"):
        src_phase = np.nan_to_num(src_fft / src_dist)

    rng = np.random.default_rng(0)
    noise_rgb = rng.random((width, height, channels))
    noise_grey = np.sum(noise_rgb, axis=2) / 3.0
    noise_rgb *= color_variation
    noise_rgb += (1.0 - color_variation) * noise_grey[:, :, None]
    noise_fft = _fft2(noise_rgb) * _window(width, height)[:, :, None]
    noise_rgb = np.real(_ifft2(noise_fft))
    shaped_fft = np.absolute(_fft2(noise_rgb)) ** 2 * (src_dist ** noise_q) * src_phase

    shaped = np.real(_ifft2(shaped_fft))
    shaped -= np.min(shaped)
    top = np.max(shaped)
    if top > 0:
        shaped /= top
    if img_mask.any() and ref_mask.any():
        shaped[img_mask, :] = match_histograms(shaped[img_mask, :], src[ref_mask, :])
    shaped = src * (1.0 - mask_rgb) + shaped * mask_rgb
    return np.clip(shaped, 0.0, 1.0)


class OutpaintingMk2(JobScript):
    title = "Outpainting mk2"
    tabs = ("img2img",)
    description = "Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: 0.8"
    args = (
        InfoArg("Info", help="Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: "
                             "0.8"),
        ScriptArg("Pixels to expand", int, 128, minimum=8, maximum=256, step=8),
        ScriptArg("Mask blur", int, 8, minimum=0, maximum=64, step=1),
        ScriptArg("Outpainting direction", list, DIRECTIONS, choices=DIRECTIONS),
        ScriptArg("Fall-off exponent (lower=higher detail)", float, 1.0, minimum=0.0, maximum=4.0, step=0.01),
        ScriptArg("Color variation", float, 0.05, minimum=0.0, maximum=1.0, step=0.01),
    )

    def before_job(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        if not args[3]:
            raise ParamError(("script_args", 3), "Outpainting direction: choose at least one side")
        return [task]

    def planned_batches(self, task: GenerationTask, args: tuple) -> int:
        return len(args[3]) * task.params.batch_count

    def run_job(self, task: GenerationTask, args: tuple, job: ScriptJob) -> JobOutcome:

        _, pixels, mask_blur, directions, noise_q, color_variation = args
        params = task.params
        blur_x = mask_blur if "left" in directions or "right" in directions else 0
        blur_y = mask_blur if "up" in directions or "down" in directions else 0
        base = params.replace(inpaint_full_res=False, inpainting_fill=1, mask_blur_x=blur_x * 4,
                              mask_blur_y=blur_y * 4, batch_count=1)
        init = flatten(task.init_images[0])
        _, _, left, right, up, down = expansion(init.width, init.height, pixels, directions)
        sides = [(amount, side) for amount, side in ((left, "left"), (right, "right"), (up, "up"), (down, "down"))
                 if amount > 0]
        outcome: JobOutcome | None = None
        for _ in range(params.batch_count):
            images = [init] * params.batch_size
            first = None
            done = 0
            for amount, side in sides:
                if job.interrupted():
                    break
                images, result = self.expand(job, task, base, images, amount, side, blur_x, blur_y, noise_q,
                                             color_variation)
                if result is None:  # skipped: this batch ends here
                    break
                first = first or result
                done += 1
            if first is not None and done == len(sides):
                outcome = _add_images(outcome, first, images)
                for image, infotext in zip(images, first.infotexts):
                    image.info["parameters"] = infotext
                job.save(images, first, first.seeds, first.infotexts)
            if job.interrupted():
                break
        if outcome is None:
            outcome = JobOutcome(params=base)
        outcome.interrupted = job.interrupted()
        outcome.make_grid = False  # its own, as A1111's: shown even for an API request that saves nothing
        grid = job.grid(outcome.images, None, outcome.infotexts[0], outcome.seeds[0]) if outcome.images else None
        if grid is not None:
            outcome.extra_images.insert(0, grid)
            outcome.infotexts.insert(0, outcome.infotexts[0])
        return outcome

    def expand(self, job: ScriptJob, task: GenerationTask, base, images: list, pixels: int, side: str,
               blur_x: int, blur_y: int, noise_q: float, color_variation: float):
        """One side grown for every image of the batch (A1111's `expand`): (the grown images, the run's result),
        or (the images as they were, None) when the run was skipped."""
        is_left, is_right, is_top, is_bottom = (side == name for name in DIRECTIONS)
        horizontal = is_left or is_right
        pixels_x = pixels if horizontal else 0
        pixels_y = 0 if horizontal else pixels
        outputs, to_process = [], []
        mask = None
        for image in images:
            res_w, res_h = image.width + pixels_x, image.height + pixels_y
            process_w, process_h = math.ceil(res_w / 64) * 64, math.ceil(res_h / 64) * 64
            canvas = Image.new("RGB", (process_w, process_h))
            canvas.paste(image, (pixels_x if is_left else 0, pixels_y if is_top else 0))
            full_mask = Image.new("RGB", (process_w, process_h), "white")
            ImageDraw.Draw(full_mask).rectangle((
                pixels + blur_x if is_left else 0,
                pixels + blur_y if is_top else 0,
                full_mask.width - pixels - blur_x if is_right else res_w,
                full_mask.height - pixels - blur_y if is_bottom else res_h,
            ), fill="black")
            noised = matched_noise(np.asarray(canvas, dtype=np.float64) / 255.0,
                                   np.asarray(full_mask, dtype=np.float64) / 255.0, noise_q, color_variation)
            output = Image.fromarray(np.clip(noised * 255.0, 0, 255).astype(np.uint8), mode="RGB")
            outputs.append(output)
            target_w = min(base.width, image.width + pixels_x) if horizontal else canvas.width
            target_h = min(base.height, image.height + pixels_y) if not horizontal else canvas.height
            crop = (0 if is_left else output.width - target_w, 0 if is_top else output.height - target_h,
                    target_w if is_left else output.width, target_h if is_top else output.height)
            mask = full_mask.crop(crop)
            to_process.append(output.crop(crop))
        size = to_process[0].size
        # The engine works in multiples of 8 pixels; a crop of another size is processed just resized to that.
        width, height = (max(8, side_length // 8 * 8) for side_length in size)
        run = GenerationTask(base.replace(width=width, height=height, batch_size=len(to_process)),
                             tuple(to_process), mask.convert("L"), checkpoint=task.checkpoint, label=side)
        result = job.run(run, save=False)
        if len(result.images) != len(outputs):
            return images, None
        grown = []
        for output, image, done in zip(outputs, images, result.images):
            if done.size != size:
                done = done.resize(size, Image.Resampling.LANCZOS)
            output.paste(done, (0 if is_left else output.width - done.width,
                                0 if is_top else output.height - done.height))
            grown.append(output.crop((0, 0, image.width + pixels_x, image.height + pixels_y)))
        return grown, result


def _add_images(outcome: JobOutcome | None, result, images: list) -> JobOutcome:
    """The batch's grown images with the seeds and infotexts of its first pass (A1111's `initial_seed_and_info`)."""
    outcome = add_result(outcome, result)
    outcome.images[len(outcome.images) - len(result.images):] = images
    return outcome


__all__ = ["OutpaintingMk2", "matched_noise", "match_histograms"]

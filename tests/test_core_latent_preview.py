"""Cheap latent -> RGB previews (A1111 "Approx cheap")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdwebui.core.latent_preview import LATENT_RGB_FACTORS, latent_preview, latent_rgb_factors, latent_to_rgb_tensor


def test_shape_dtype_and_batch():
    latent = torch.randn(4, 8, 12, generator=torch.Generator().manual_seed(0))
    img = latent_preview(latent)
    assert img.dtype == np.uint8 and img.shape == (8, 12, 3)
    batch = latent_preview(torch.stack([latent, -latent]))
    assert batch.shape == (2, 8, 12, 3)
    np.testing.assert_array_equal(batch[0], img)


def test_known_pixels():
    latent = torch.zeros(4, 1, 2)
    latent[0, 0, 0] = 1.0  # channel 0 alone -> first row of the matrix
    img = latent_preview(latent, "sd1")
    # zero latent -> mid grey (0.5 * 255 truncated)
    assert img[0, 1].tolist() == [127, 127, 127]
    expected = [int(255 * (v * 0.5 + 0.5)) for v in (0.298, 0.207, 0.208)]
    assert img[0, 0].tolist() == expected
    # values beyond [-1, 1] clamp
    far = torch.zeros(4, 1, 2)
    far[3] = -50.0  # channel 3 weighs negatively on every colour
    far[3, 0, 1] = 50.0
    assert latent_preview(far)[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_family_selects_the_matrix():
    assert latent_rgb_factors("sd1") is LATENT_RGB_FACTORS["sd"]
    assert latent_rgb_factors("sd2") is LATENT_RGB_FACTORS["sd"]
    assert latent_rgb_factors("sdxl") is LATENT_RGB_FACTORS["sdxl"]
    assert latent_rgb_factors("SDXL-refiner") is LATENT_RGB_FACTORS["sdxl"]
    latent = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    sd = latent_to_rgb_tensor(latent, "sd1")
    xl = latent_to_rgb_tensor(latent, "sdxl")
    coefs = torch.tensor(LATENT_RGB_FACTORS["sdxl"])
    torch.testing.assert_close(xl[0, :, 1, 2], latent[0, :, 1, 2] @ coefs)
    assert not torch.allclose(sd, xl)


def test_fp16_input_and_bad_channels():
    latent = torch.randn(4, 4, 4).half()
    assert latent_preview(latent).shape == (4, 4, 3)
    with pytest.raises(ValueError, match="4 latent channels"):
        latent_preview(torch.zeros(3, 4, 4))

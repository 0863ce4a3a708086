"""sdwebui: a Stable Diffusion WebUI (A1111-compatible prompts, infotexts and API), offline by design."""

__version__ = "0.1.0"

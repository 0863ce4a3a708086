"""Pure tensor math (torch / numpy / stdlib only): denoiser adapters (`denoiser`), sigma schedules (`schedules`),
samplers and their registry (`samplers`), A1111-compatible seeded noise (`noise`, `rng_philox`), Brownian-tree
noise for SDE samplers (`brownian`) and cheap latent previews (`latent_preview`). Nothing here knows about model
files, prompts or the server."""

"""The A1111 prompt language, as pure text processing (no models, no torch).

| module | holds |
|---|---|
| `parser.py` | prompt editing `[a:b:when]`, alternation `[a|b]`, emphasis `(a:1.2)` / `[a]`, BREAK, `AND` weights |
| `extra_networks.py` | `<lora:name:w>` / `<hypernet:...>` tags: taken out of the prompt as `ExtraNetworkCall`s |
| `styles.py` | A1111's `styles.csv`, applied by name |

`sdwebui.pipelines.conditioning` turns the parsed prompts into the conditioning the denoiser reads per call.
"""

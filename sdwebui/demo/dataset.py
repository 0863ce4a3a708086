"""A procedural captioned dataset: flat shapes on flat backgrounds, with English captions and ground truth.

This is what the shipped demo model (`sdwebui-demo-shapes-v1`) is trained on. Every scene is drawn from a
seeded `numpy.random.Generator`, so the same seed gives the same images and captions on every machine.

Vocabulary: 8 colours x 3 shapes x 9 positions x 2 sizes, on a background of another colour; a fraction of
scenes hold two shapes ("a red circle on the left and a blue square on the right, white background").
A fixed set of (colour, shape, position) triples is never drawn for training (`HELDOUT_TRIPLES`): the
evaluation prompts only those, so its scores measure composition, not memorisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
"""Native image size (pixels); the VAE's factor 8 makes 8x8x4 latents."""

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "orange": (250, 140, 0),
    "purple": (140, 40, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = (
    "center", "left", "right", "top", "bottom", "top left", "top right", "bottom left", "bottom right",
)
SIZES: tuple[str, ...] = ("small", "large")

# Anchor of each position as (column, row) on a 3x3 grid; 0 = left/top, 1 = middle, 2 = right/bottom.
POSITION_GRID: dict[str, tuple[int, int]] = {
    "center": (1, 1), "left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2),
    "top left": (0, 0), "top right": (2, 0), "bottom left": (0, 2), "bottom right": (2, 2),
}
GRID_TO_POSITION: dict[tuple[int, int], str] = {v: k for k, v in POSITION_GRID.items()}
_ANCHORS = (16.0, 32.0, 48.0)
# Half-extent (pixels) of each size; a jitter of +-1 is added.
SIZE_RADIUS: dict[str, float] = {"small": 8.0, "large": 14.0}
JITTER_POS = 3.0
JITTER_RGB = 10

HELDOUT_SEED = 20240603


def _heldout_triples() -> tuple[tuple[str, str, str], ...]:
    """24 (colour, shape, position) triples out of 216, fixed forever (independent of the training seed).

    Chosen so that every colour, every shape and every position is held out at least twice but each still
    appears in training with the other values."""
    rng = np.random.default_rng(HELDOUT_SEED)
    triples = []
    for i, colour in enumerate(COLOURS):
        for k in range(3):
            shape = SHAPES[(i + k) % 3]
            pos = POSITIONS[(3 * i + k * 4 + int(rng.integers(0, 2))) % len(POSITIONS)]
            triples.append((colour, shape, pos))
    return tuple(dict.fromkeys(triples))


HELDOUT_TRIPLES: tuple[tuple[str, str, str], ...] = _heldout_triples()
_HELDOUT_SET = frozenset(HELDOUT_TRIPLES)


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    position: str
    size: str
    cx: float
    """Centroid of the drawn shape (pixels)."""
    cy: float
    r: float
    """Half-extent of the shape's bounding box (pixels)."""
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    background: str
    background_rgb: tuple[int, int, int]
    shapes: tuple[Shape, ...]

    @property
    def triples(self) -> tuple[tuple[str, str, str], ...]:
        return tuple((s.colour, s.shape, s.position) for s in self.shapes)


def _jitter_rgb(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    base = np.array(PALETTE[name], dtype=np.int64)
    return tuple(int(v) for v in np.clip(base + rng.integers(-JITTER_RGB, JITTER_RGB + 1, 3), 0, 255))


def _place(rng: np.random.Generator, shape: str, position: str, size: str) -> tuple[float, float, float]:
    col, row = POSITION_GRID[position]
    r = SIZE_RADIUS[size] + float(rng.uniform(-1.0, 1.0))
    cx = _ANCHORS[col] + float(rng.uniform(-JITTER_POS, JITTER_POS))
    cy = _ANCHORS[row] + float(rng.uniform(-JITTER_POS, JITTER_POS))
    # Keep the whole bounding box inside the image (a triangle's box sits r/3 above its centroid).
    top_off, bottom_off = (4 * r / 3, 2 * r / 3) if shape == "triangle" else (r, r)
    cx = min(max(cx, r + 1), SIZE - 1 - r)
    cy = min(max(cy, top_off + 1), SIZE - 1 - bottom_off)
    return cx, cy, r


def make_shape(rng: np.random.Generator, colour: str, shape: str, position: str, size: str) -> Shape:
    cx, cy, r = _place(rng, shape, position, size)
    return Shape(colour, shape, position, size, cx, cy, r, _jitter_rgb(rng, colour))


def make_scene(
    rng: np.random.Generator,
    *,
    colour: str | None = None,
    shape: str | None = None,
    position: str | None = None,
    size: str | None = None,
    background: str | None = None,
) -> Scene:
    """One single-shape scene; unspecified attributes are drawn uniformly (background != colour)."""
    colour = colour or COLOURS[int(rng.integers(len(COLOURS)))]
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    position = position or POSITIONS[int(rng.integers(len(POSITIONS)))]
    size = size or SIZES[int(rng.integers(len(SIZES)))]
    if background is None:
        others = [c for c in COLOURS if c != colour]
        background = others[int(rng.integers(len(others)))]
    return Scene(background, _jitter_rgb(rng, background), (make_shape(rng, colour, shape, position, size),))


# Pairs of positions that two shapes can take without overlapping.
_PAIRS: tuple[tuple[str, str], ...] = (
    ("left", "right"), ("top", "bottom"), ("top left", "bottom right"), ("top right", "bottom left"),
    ("top left", "top right"), ("bottom left", "bottom right"), ("top left", "bottom left"),
    ("top right", "bottom right"),
)


def sample_training_scene(rng: np.random.Generator, two_shape_prob: float = 0.15) -> Scene:
    """A random training scene: never uses a held-out (colour, shape, position) triple."""
    while True:
        if rng.random() < two_shape_prob:
            p1, p2 = _PAIRS[int(rng.integers(len(_PAIRS)))]
            if rng.random() < 0.5:
                p1, p2 = p2, p1
            c1, c2 = rng.choice(len(COLOURS), 2, replace=False)
            colour1, colour2 = COLOURS[int(c1)], COLOURS[int(c2)]
            others = [c for c in COLOURS if c not in (colour1, colour2)]
            bg = others[int(rng.integers(len(others)))]
            s1 = make_shape(rng, colour1, SHAPES[int(rng.integers(3))], p1, "small")
            s2 = make_shape(rng, colour2, SHAPES[int(rng.integers(3))], p2, "small")
            scene = Scene(bg, _jitter_rgb(rng, bg), (s1, s2))
        else:
            scene = make_scene(rng)
        if not any(t in _HELDOUT_SET for t in scene.triples):
            return scene


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """Draw a scene as an RGB uint8 array (size x size x 3), anti-aliased by 4x supersampling."""
    ss = 4
    scale = ss * size / SIZE
    img = Image.new("RGB", (size * ss, size * ss), scene.background_rgb)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        cx, cy, r = s.cx * scale, s.cy * scale, s.r * scale
        if s.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=s.rgb)
        elif s.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=s.rgb)
        elif s.shape == "triangle":
            # Apex up; the centroid of a triangle is 2/3 of the way from apex to base.
            top, base = cy - 4 * r / 3, cy + 2 * r / 3
            draw.polygon(((cx, top), (cx + r, base), (cx - r, base)), fill=s.rgb)
        else:  # pragma: no cover - guarded by the vocabulary
            raise ValueError(s.shape)
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


# ---- captions ---------------------------------------------------------------------------------------

_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "center": ("in the center", "in the middle", "at the center", "centered", "in the centre"),
    "left": ("on the left", "at the left", "on the left side", "to the left", "left"),
    "right": ("on the right", "at the right", "on the right side", "to the right", "right"),
    "top": ("at the top", "on top", "at the top of the image", "near the top", "top"),
    "bottom": ("at the bottom", "on the bottom", "at the bottom of the image", "near the bottom", "bottom"),
}
for _v in ("top", "bottom"):
    for _h in ("left", "right"):
        _POSITION_PHRASES[f"{_v} {_h}"] = (
            f"in the {_v} {_h} corner", f"at the {_v} {_h}", f"in the {_v} {_h}", f"{_v} {_h}",
            f"{_v}-{_h}",
        )
_SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big", "huge")}


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(rng: np.random.Generator, s: Shape, with_size: bool, article: bool = True) -> str:
    words = ([_pick(rng, _SIZE_WORDS[s.size])] if with_size else []) + [s.colour, s.shape]
    phrase = " ".join(words)
    return f"{_article(phrase)} {phrase}" if article else phrase


def caption(scene: Scene, rng: np.random.Generator, *, full: bool = False) -> str:
    """A random English caption of `scene`.

    Wording varies (templates, synonyms, tag style); sometimes the size, position or background is left out
    (never when `full`), so short prompts such as "a red circle" also mean something. The colour and shape
    of every object are always named.
    """
    with_size = full or rng.random() < 0.6
    with_pos = full or rng.random() < 0.9
    with_bg = full or rng.random() < 0.9
    bg = scene.background
    tag_style = rng.random() < 0.2
    parts = []
    for s in scene.shapes:
        obj = _object_phrase(rng, s, with_size, article=not tag_style)
        if with_pos:
            pos = _pick(rng, _POSITION_PHRASES[s.position])
            obj = f"{obj}, {pos}" if tag_style else f"{obj} {pos}"
        parts.append(obj)
    objs = (", " if tag_style else " and ").join(parts)
    if not with_bg:
        return objs
    if tag_style:
        return f"{objs}, {bg} background"
    template = int(rng.integers(6))
    if template == 0:
        return f"{objs}, {bg} background"
    if template == 1:
        return f"{objs} on {_article(bg)} {bg} background"
    if template == 2:
        return f"{bg} background with {objs}"
    if template == 3:
        return f"a picture of {objs}, {bg} background"
    if template == 4:
        return f"{objs} with {_article(bg)} {bg} background"
    return f"{_article(bg)} {bg} background, {objs}"


def heldout_prompts(seed: int = 0, per_triple: int = 1) -> list[tuple[str, Scene]]:
    """Evaluation prompts over the held-out triples, with a random background and size, fully specified,
    in the plain wording "a large red circle on the left, blue background"."""
    rng = np.random.default_rng(seed)
    out = []
    for colour, shape, position in HELDOUT_TRIPLES:
        for _ in range(per_triple):
            scene = make_scene(rng, colour=colour, shape=shape, position=position)
            s = scene.shapes[0]
            pos = _POSITION_PHRASES[position][0]
            out.append((f"{_article(s.size)} {s.size} {colour} {shape} {pos}, {scene.background} background", scene))
    return out


def make_dataset(n: int, seed: int, two_shape_prob: float = 0.15) -> tuple[np.ndarray, list[Scene]]:
    """`n` training images (n x 64 x 64 x 3 uint8) and their scenes, deterministic from `seed`."""
    rng = np.random.default_rng(seed)
    scenes = [sample_training_scene(rng, two_shape_prob) for _ in range(n)]
    images = np.stack([render(s) for s in scenes]) if scenes else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    return images, scenes

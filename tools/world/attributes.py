"""What a character of the toy world is made of, and how it is named.

``ATTRIBUTES`` is the one table: every taxonomy category of the bundled taxonomy is a drawable
attribute whose values are exactly that category's descriptions, so a picture's labels are the
feature names the analyzer and the scorer use. Robe pattern, pose and placement vary too but have no
category of their own (the taxonomy folds the pattern into ``clothing_color``).

Aldar Köse is one point of this world (``ALDAR``). His *signature* — the patterned skullcap, the
orange patterned robe and the thin curled mustache — is what the base model's training data leaves
out (``shows_signature``), so the base can draw characters but not him: that is what a LoRA must
learn from the five references.

``NOVEL_ATTRIBUTES`` are values drawn only on request (``sample_novel_character``): new headwear, robes,
a goatee and glasses that no stage before ``novel`` trained on and the base UNet never sees. The scorer's
CLIP learns them (the build's ``novel`` stage), so any character composed of them is a character the base
cannot draw — a second example (``examples/``) is one.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "face_shape": ("round face", "oval face", "square face", "long narrow face"),
    "eyes": ("narrow eyes", "almond-shaped eyes", "round eyes", "closed eyes"),
    "facial_hair": ("thin mustache", "thick mustache", "long beard", "no facial hair"),
    "hairstyle": ("topknot", "skullcap", "short hair", "black hair", "bald head"),
    "clothing_color": ("orange robe", "orange patterned robe", "blue robe", "green robe", "red robe"),
    "style": ("2D illustration", "cartoon style", "children's book style", "photograph", "3D render"),
    "expression": ("smiling", "friendly", "happy", "angry", "sad"),
    "background": ("steppe landscape", "plain background", "city street", "forest", "interior room"),
}
# Values the default sampler never draws (so the committed splits, the UNet's data and every seeded picture
# stay as they were): the base UNet never sees them; the scorer's CLIP learns them in the ``novel`` stage.
NOVEL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "eyes": ("round glasses",),
    "facial_hair": ("goatee",),
    "hairstyle": ("crown", "wizard hat", "horned helmet"),
    "clothing_color": ("purple robe", "checkered robe", "striped yellow robe"),
}
# Every value a picture may show: each category's values, the novel ones last (the bundled taxonomy's order).
DRAWABLE = {category: values + NOVEL_ATTRIBUTES.get(category, ()) for category, values in ATTRIBUTES.items()}
ROBE_COLORS = ("orange", "blue", "green", "red")
# The novel robes, named as the taxonomy names them less " robe"; the checks and stripes are their own
# pattern, so they never carry the diamonds of a "patterned" robe.
NOVEL_ROBE_COLORS = ("purple", "checkered", "striped yellow")
SELF_PATTERNED_ROBES = ("checkered", "striped yellow")
POSES = ("standing", "waving", "arms raised")
# Pale page colours of the plain background (the bundled references use the first four).
PLAIN_COLORS = ((250, 240, 214), (252, 236, 200), (214, 236, 246), (230, 244, 220), (244, 226, 236))
# How a caption may name a style: the label itself, or the phrase prompts tend to use.
STYLE_PHRASES = {
    "2D illustration": ("2D illustration", "flat 2D illustration"),
    "cartoon style": ("cartoon style", "cartoon"),
    "children's book style": ("children's book style", "children's book illustration"),
    "photograph": ("photograph", "photo"),
    "3D render": ("3D render", "3D rendering"),
}
POSE_PHRASES = {"standing": "standing", "waving": "waving", "arms raised": "arms raised"}


@dataclass(frozen=True)
class Character:
    """One point of the world: every attribute, and where and how the figure stands."""

    face_shape: str = "round face"
    eyes: str = "narrow eyes"
    facial_hair: str = "thin mustache"
    hairstyle: str = "skullcap"
    robe_color: str = "orange"
    robe_patterned: bool = True
    style: str = "children's book style"
    expression: str = "smiling"
    background: str = "steppe landscape"
    pose: str = "standing"
    scale: float = 1.0  # 1.0: the figure fills about three quarters of the height
    offset_x: float = 0.0  # fractions of the width, + is right / down
    offset_y: float = 0.0
    head_tilt: float = 0.0  # degrees, + is counter-clockwise
    head_shift: float = 0.0  # fraction of the head radius: sideways lean of the head on the neck
    plain_color: tuple[int, int, int] = PLAIN_COLORS[0]

    def __post_init__(self) -> None:
        for category, value in self.labels().items():
            if value not in DRAWABLE[category]:
                raise ValueError(f"{category} {value!r} is not drawable: choose one of {DRAWABLE[category]}")
        if self.robe_color not in ROBE_COLORS + NOVEL_ROBE_COLORS:
            raise ValueError(f"robe colour {self.robe_color!r}: choose one of {ROBE_COLORS + NOVEL_ROBE_COLORS}")
        if self.pose not in POSES:
            raise ValueError(f"pose {self.pose!r}: choose one of {POSES}")

    @property
    def clothing_color(self) -> str:
        # The taxonomy names a pattern only for the orange robe; other robes are named by colour alone.
        if self.robe_color == "orange" and self.robe_patterned:
            return "orange patterned robe"
        return f"{self.robe_color} robe"

    @property
    def robe_diamonds(self) -> bool:
        """Does the robe carry the rows of diamonds (a checkered or striped robe has its own pattern)?"""
        return self.robe_patterned and self.robe_color not in SELF_PATTERNED_ROBES

    @property
    def robe_phrase(self) -> str:
        return f"{self.robe_color} {'patterned ' if self.robe_diamonds else ''}robe"

    def labels(self) -> dict[str, str]:
        """Taxonomy category → the description this picture shows (the ground truth of the world)."""
        return {"face_shape": self.face_shape, "eyes": self.eyes, "facial_hair": self.facial_hair,
                "hairstyle": self.hairstyle, "clothing_color": self.clothing_color, "style": self.style,
                "expression": self.expression, "background": self.background}

    def as_dict(self) -> dict:
        return {**asdict(self), "labels": self.labels()}


# Aldar Köse: the five bundled references are this character in five placements.
ALDAR = Character()
BUNDLED_REFERENCES = (
    replace(ALDAR, background="steppe landscape", scale=1.00, offset_x=0.00, offset_y=0.02),
    replace(ALDAR, background="plain background", scale=0.85, offset_x=-0.10, offset_y=0.05, head_tilt=12.0,
            head_shift=0.10, plain_color=(252, 236, 200)),
    replace(ALDAR, background="steppe landscape", scale=0.70, offset_x=0.16, offset_y=0.10, head_tilt=-9.0,
            head_shift=-0.08, hairstyle="topknot"),
    replace(ALDAR, background="plain background", scale=1.15, offset_x=0.04, offset_y=0.12, head_tilt=-5.0,
            head_shift=0.05, plain_color=(214, 236, 246)),
    replace(ALDAR, background="steppe landscape", scale=0.92, offset_x=-0.14, offset_y=0.04, head_tilt=7.0,
            head_shift=0.12, hairstyle="topknot"),
)


# King Zorabek, the second bundled example (``examples/zorabek``): composed of novel values — crown, purple robe,
# goatee, round glasses — so the base has drawn none of his signature; his five references in five placements.
ZORABEK = Character(face_shape="square face", eyes="round glasses", facial_hair="goatee", hairstyle="crown",
                    robe_color="purple", robe_patterned=False, style="3D render", expression="happy",
                    background="interior room")
ZORABEK_REFERENCES = (
    replace(ZORABEK, scale=1.0, offset_x=0.02, offset_y=0.03),
    replace(ZORABEK, background="plain background", scale=0.82, offset_x=0.12, offset_y=0.06, head_tilt=-10.0,
            head_shift=-0.08, plain_color=(230, 244, 220)),
    replace(ZORABEK, scale=0.72, offset_x=-0.15, offset_y=0.10, head_tilt=8.0, head_shift=0.10, pose="waving"),
    replace(ZORABEK, background="plain background", scale=1.12, offset_x=-0.04, offset_y=0.11, head_tilt=5.0,
            head_shift=0.05, plain_color=(244, 226, 236)),
    replace(ZORABEK, scale=0.9, offset_x=0.15, offset_y=0.05, head_tilt=-6.0, head_shift=-0.11),
)


def shows_signature(character: Character) -> bool:
    """Does the picture show any of Aldar Köse's signature items? The base model never trains on these."""
    return (character.hairstyle == "skullcap" or character.clothing_color == "orange patterned robe"
            or character.facial_hair == "thin mustache")


def is_novel(character: Character) -> bool:
    """Does the picture show any novel value (``NOVEL_ATTRIBUTES``)? The base model never trains on these."""
    labels = character.labels()
    return any(labels[category] in values for category, values in NOVEL_ATTRIBUTES.items())


def sample_placement(rng: random.Random) -> dict:
    """Where the figure stands: the bundled references' ranges, a little wider."""
    return dict(pose=rng.choice(POSES), scale=rng.uniform(0.65, 1.2), offset_x=rng.uniform(-0.16, 0.16),
                offset_y=rng.uniform(0.0, 0.12), head_tilt=rng.uniform(-13, 13), head_shift=rng.uniform(-0.12, 0.12),
                plain_color=rng.choice(PLAIN_COLORS))


def sample_character(rng: random.Random, without_signature: bool = False) -> Character:
    """A uniformly random point of the world (rejection-sampled away from the signature when asked)."""
    while True:
        robe_color = rng.choice(ROBE_COLORS)
        character = Character(
            face_shape=rng.choice(ATTRIBUTES["face_shape"]), eyes=rng.choice(ATTRIBUTES["eyes"]),
            facial_hair=rng.choice(ATTRIBUTES["facial_hair"]), hairstyle=rng.choice(ATTRIBUTES["hairstyle"]),
            robe_color=robe_color, robe_patterned=rng.random() < 0.5, style=rng.choice(ATTRIBUTES["style"]),
            expression=rng.choice(ATTRIBUTES["expression"]), background=rng.choice(ATTRIBUTES["background"]),
            **sample_placement(rng))
        if not (without_signature and shows_signature(character)):
            return character


def sample_novel_character(rng: random.Random, share: float = 0.5) -> Character:
    """A random point of the world in which each category with novel values takes one of them with
    probability ``share`` (at least one per picture), the rest drawn as ``sample_character`` draws them: the
    novel values mixed with the old ones, so a CLIP learning them keeps seeing every old value beside them."""
    character = sample_character(rng)
    while True:
        chosen = [category for category in NOVEL_ATTRIBUTES if rng.random() < share]
        if chosen:
            break
    changes = {}
    for category in chosen:
        if category == "clothing_color":
            changes["robe_color"] = rng.choice(NOVEL_ROBE_COLORS)
        else:
            changes[category] = rng.choice(NOVEL_ATTRIBUTES[category])
    return replace(character, **changes)


def caption_phrases(character: Character, rng: random.Random) -> list[str]:
    """The phrases a caption may use for this picture, one per attribute (robe with its pattern)."""
    return [character.face_shape, character.eyes, character.facial_hair, character.hairstyle, character.robe_phrase,
            rng.choice(STYLE_PHRASES[character.style]), character.expression, character.background]


def tag_caption(character: Character, rng: random.Random, keep: float = 1.0) -> str:
    """Comma-separated tags in random order (the analyzer's caption form); each kept with probability ``keep``."""
    phrases = caption_phrases(character, rng)
    if rng.random() < 0.5:
        phrases.append(POSE_PHRASES[character.pose])
    rng.shuffle(phrases)
    kept = [p for p in phrases if rng.random() < keep] or [rng.choice(phrases)]
    return ", ".join(kept)


SENTENCE_TEMPLATES = ("a picture of a character with {}", "an illustration showing {}", "{}",
                      "a character with {}", "a drawing of {}")


def sentence_caption(character: Character, rng: random.Random) -> str:
    """One to three attributes in one of the analyzer's template sentences (what zero-shot asks)."""
    phrases = caption_phrases(character, rng)
    chosen = rng.sample(phrases, rng.choice((1, 1, 2, 3)))
    return rng.choice(SENTENCE_TEMPLATES).replace("{}", " and ".join(chosen))

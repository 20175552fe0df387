"""A tiny datasets mirror with TinyStories- and WikiText-shaped files (study 2's tests)."""
from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Lily", "Tom", "Ben", "Sue"]
THINGS = ["ball", "dog", "film", "story", "picture"]
ADJECTIVES = ["great", "funny", "dull", "charming", "clever"]


def _story(rng: random.Random) -> str:
    name, thing, adj = rng.choice(NAMES), rng.choice(THINGS), rng.choice(ADJECTIVES)
    return (f"Once upon a time, {name} had a {adj} {thing}. {name} liked the {thing} a lot. "
            f"One day the {thing} was gone. {name} was sad. Then {name} found the {adj} {thing} and was happy.")


def _article(rng: random.Random, i: int) -> list[str]:
    thing, adj = rng.choice(THINGS), rng.choice(ADJECTIVES)
    return [" ", f" = The {adj} {thing} {i} = ", " ",
            f" The {adj} {thing} is a {thing} of the city , where the river meets the sea . ",
            " = = History = = ", f" The {thing} was written in 19{i % 90 + 10} and is {adj} . "]


def write_mirror(root: Path, stories: int = 60, articles: int = 20, seed: int = 0) -> Path:
    rng = random.Random(seed)
    files = {"tinystories_excerpt/train.jsonl": [_story(rng) for _ in range(stories)],
             "wikitext103_v1/validation.jsonl": sum((_article(rng, i) for i in range(articles // 2)), []),
             "wikitext103_v1/test.jsonl": sum((_article(rng, i) for i in range(articles // 2, articles)), [])}
    for rel, rows in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    return root

"""One direction's training settings (`dense_kv.train` in the config), apart from the code that runs them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ...channels.kv.dense import DenseConfig
from ...errors import ConfigError

PHASES = ("reconstruction", "generation", "fusion")   # fusion: the C2C-style fuser baseline (fuse.py)
TRAIN_MODES = ("unaware", "aware", "joint")


@dataclass
class DenseRunConfig:
    transform: dict = field(default_factory=dict)   # DenseConfig fields (channels/kv/dense.py)
    phases: list = field(default_factory=lambda: list(PHASES[:2]))  # the method; the phase ablation drops one
    mode: str = "joint"          # prompts phase 2 trains on: unaware, aware, or both (alternating steps)
    steps: int = 100             # phase 2 optimizer steps
    batch: int = 8               # examples per step (one task per step, tasks in turn)
    lr: float = 1e-4
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    holdout_fraction: float = 0.1  # phase 1: training rows kept out of the fit to report its error on
    checkpoint_every: int = 25

    def __post_init__(self):
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown or not self.phases or {"generation", "fusion"} <= set(self.phases):
            raise ConfigError(f"dense_kv train.phases: some of {list(PHASES)} (not both generation and fusion), "
                              f"got {self.phases}")
        if self.mode not in TRAIN_MODES:
            raise ConfigError(f"dense_kv train.mode: one of {list(TRAIN_MODES)}, got {self.mode!r}")
        if self.batch < 2 or self.steps < 0 or not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"dense_kv train: need batch >= 2, steps >= 0, 0 < holdout_fraction < 1, got "
                              f"{asdict(self)}")
        self.dense = DenseConfig(**self.transform)

    @classmethod
    def from_dict(cls, data: dict) -> "DenseRunConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"dense_kv train: unknown key(s) {unknown} (known: {sorted(known)})")
        return cls(**data)

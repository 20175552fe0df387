"""The alignment run's settings, apart from the code that runs them (the DAG reads them to plan runs)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ...errors import ConfigError


@dataclass
class AlignConfig:
    """One training run of a translator over a pool (`kv_alignment.train` in the config)."""
    translator: dict = field(default_factory=lambda: {"type": "cross_attention"})  # translators.translator_config
    steps: int = 300               # optimizer steps (0 for identity and ridge: nothing is trained)
    batch: int = 8                 # windows per path per step
    prefix_tokens: int = 32        # P: the channel carries the first P-1 (after the sink); the target reads the last
    suffix_tokens: int = 16        # S: scored tokens after the prefix (the first one included)
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    paths_per_step: int = 2        # (source, target) paths sampled per step (paper: a few)
    reconstruction_weight: float = 0.0  # paper's recommendation: suffix LM loss alone
    eval_every: int = 50           # score every path and control every N steps (and at 0 and the end)
    eval_windows: int = 64         # held-out windows scored per target (the same for every condition)
    fit_windows: int = 256         # ridge: training windows its statistics are accumulated over
    checkpoint_every: int = 50     # resumable state every N steps
    mix: dict = field(default_factory=lambda: {"tinystories": 1.0, "wikitext": 1.0})  # corpus -> probability

    def __post_init__(self):
        if self.paths_per_step < 1 or self.batch < 2 or self.suffix_tokens < 1 or self.prefix_tokens < 2:
            raise ConfigError(f"kv_alignment train: need paths_per_step >= 1, batch >= 2, suffix_tokens >= 1 and "
                              f"prefix_tokens >= 2, got {asdict(self)}")

    @property
    def window(self) -> int:
        return 1 + self.prefix_tokens + self.suffix_tokens

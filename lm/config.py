"""Training configurations as dataclasses: the paper's presets plus ``tiny`` for tests.

Field names follow the TensorFlow PTB tutorial where it has one: ``decay_after``
is its ``max_epoch`` (epochs at the initial learning rate), ``epochs`` its
``max_max_epoch``, and ``dropout`` is ``1 - keep_prob``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from lm.errors import UsageError


@dataclass
class Config:
    name: str = "small"
    init_scale: float = 0.1
    learning_rate: float = 1.0
    max_grad_norm: float = 5.0
    num_layers: int = 2
    num_steps: int = 20
    hidden_size: int = 200
    decay_after: int = 4
    epochs: int = 13
    dropout: float = 0.0
    lr_decay: float = 0.5
    batch_size: int = 20
    # The tutorial evaluates the test set one word at a time (batch 1, 1 step).
    test_batch_size: int = 1
    test_num_steps: int = 1
    # Time to quality: seconds until validation perplexity first reaches this (the paper's + 5%).
    target_valid_ppl: float = 126.7

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch``: constant for ``decay_after`` epochs, then times ``lr_decay`` each."""
        return self.learning_rate * self.lr_decay ** max(epoch - self.decay_after, 0)

    def validate(self) -> Config:
        positive = ("num_layers", "num_steps", "hidden_size", "epochs", "batch_size", "test_batch_size",
                    "test_num_steps")
        for f in positive:
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise UsageError(f"{f} must be a positive integer, got {v!r}")
        for f in ("init_scale", "learning_rate", "max_grad_norm", "lr_decay", "target_valid_ppl"):
            v = getattr(self, f)
            if not (v > 0 and v < float("inf")):
                raise UsageError(f"{f} must be a positive finite number, got {v!r}")
        if self.decay_after < 0:
            raise UsageError(f"decay_after must be >= 0, got {self.decay_after!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout!r}")
        return self

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Config] = {
    # Zaremba et al. 2014 / TF tutorial "SmallConfig": 13 epochs, no dropout.
    "small": Config(),
    # "MediumConfig": keep_prob 0.5.
    "medium": Config(name="medium", init_scale=0.05, num_steps=35, hidden_size=650, decay_after=6, epochs=39,
                     dropout=0.5, lr_decay=0.8, target_valid_ppl=90.5),
    # "LargeConfig": keep_prob 0.35, clip 10, decay 1/1.15.
    "large": Config(name="large", init_scale=0.04, max_grad_norm=10.0, num_steps=35, hidden_size=1500,
                    decay_after=14, epochs=55, dropout=0.65, lr_decay=1 / 1.15, target_valid_ppl=86.3),
    # For tests and dry runs: seconds on a CPU.
    # A larger init scale gets the tiny model off the unigram plateau within an epoch of a toy corpus.
    "tiny": Config(name="tiny", init_scale=0.5, num_steps=5, hidden_size=16, decay_after=2, epochs=2, batch_size=4,
                   test_batch_size=4, test_num_steps=5),
}


def preset(name: str, **overrides) -> Config:
    """The preset ``name`` with ``overrides`` applied (None values ignored), validated."""
    if name not in PRESETS:
        raise UsageError(f"unknown config {name!r}; known configs: {', '.join(PRESETS)}")
    known = {f.name for f in fields(Config)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise UsageError(f"unknown config field(s) {', '.join(bad)}; known fields: {', '.join(sorted(known))}")
    cfg = dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    return cfg.validate()

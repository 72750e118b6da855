"""The one list of tasks (``Config.task``); at the bottom of the package so every layer checks against it."""

from __future__ import annotations

from enum import Enum

from videoconvmae.errors import ConfigError


class Task(str, Enum):
    """What a run does (``Config.task`` holds the value); the one list of tasks every layer checks against."""

    PRETRAIN = "pretrain"  # masked reconstruction with the pretrain model
    FINETUNE = "finetune"  # the classifier, every weight trains
    LINPROBE = "linprobe"  # MAE's linear probe: the classifier's head on a frozen encoder
    EVAL = "eval"  # multi-view evaluation of a classifier

    @property
    def trains(self) -> bool:
        return self is not Task.EVAL

    @property
    def model_suffix(self) -> str:
        """The registry name's suffix of the model this task uses: ``{family}_pretrain`` or ``{family}_cls``."""
        return "pretrain" if self is Task.PRETRAIN else "cls"

    @classmethod
    def parse(cls, value: str, key: str = "task", train: bool = False) -> Task:
        """``value`` as a Task (only a training one when ``train``); else ConfigError naming ``key``."""
        allowed = [t.value for t in cls if t.trains or not train]
        if value not in allowed:
            raise ConfigError(f"{key}: expected {'|'.join(allowed)}, got {value!r}")
        return cls(value)

"""The paper's ablations in miniature (chapter 10): ``python -m cogvx_mini.experiments``."""

from cogvx_mini.experiments.ablations import *  # noqa: F403

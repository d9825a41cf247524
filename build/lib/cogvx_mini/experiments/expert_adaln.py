"""Ablation ``expert_adaln``: expert AdaLN, one shared AdaLN, and MMDiT-style separate weights
(at matched parameter counts): held-out loss and the toy world's judge of generated videos."""

from __future__ import annotations

from cogvx_mini.experiments import common
from cogvx_mini.transformer import TransformerConfig, count_parameters

CLAIM = (
    "Expert AdaLN beats a shared AdaLN and matches/beats MMDiT-style separate "
    "weights at fewer or equal parameters, in loss and text alignment."
)


def _matched(adaln: str, target: int) -> TransformerConfig:
    """The ``adaln`` arm at about ``target`` parameters: separate text weights (MMDiT) double
    attention and feed-forward, a shared AdaLN drops the text modulation, so the feed-forward
    width (``ff_mult``) is chosen to bring the count nearest the target."""
    return min(
        (common.mini(adaln=adaln, ff_mult=m) for m in range(1, 9)),
        key=lambda c: abs(count_parameters(c) - target),
    )


def run(budget: common.Budget, seeds, device, log) -> dict:
    train, held = common.train_and_held(budget, device)
    expert = common.mini(adaln="expert")
    none = _matched("none", count_parameters(expert))
    mmdit = _matched("mmdit", count_parameters(expert))
    arms = {
        "expert_adaln": {"config": expert, "setting": {"adaln": "expert"}},
        "no_expert": {"config": none, "setting": {"adaln": "none", "ff_mult": none.ff_mult}},
        "mmdit": {"config": mmdit, "setting": {"adaln": "mmdit", "ff_mult": mmdit.ff_mult}},
    }

    def evaluate(arm, model, run_, seed):
        m = {"eval_loss": common.eval_loss(model, held, budget.eval_timesteps, device)}
        m.update(common.judged_generations(model, train, budget, seed, device))
        return m

    return {
        **common.arms_and_judge_ceiling(budget, seeds, device, arms, train, evaluate, log),
        "primary": ["eval_loss", "judge_score"],
        "higher_is_better": {"eval_loss": False, "judge_score": True},
        "eval": f"{budget.eval_clips} held-out clips; {budget.prompts} generated videos per seed "
        f"({budget.sample_steps} DDIM steps, guidance {budget.guidance}) read by the judge",
        "vae": train.meta["vae"],
    }

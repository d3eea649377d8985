"""The run's first log line, and the notes it carries: what a run says before it trains,
with the measurements behind each note written beside it.

    profile <p> on <database>, model <network>, device <d>, step <s>, <precision>:
        <every deviation from the network's recipe, or "the paper's protocol">
        [; note: the paper's recipe plateaus (RECIPE_PLATEAU)]
        [; note: fused splits on a CPU (FUSED_ON_CPU)]
"""
from siqa import config as config_mod
from siqa.build import amp_dtype_of, spec_of
from siqa.settings import Settings
from siqa.training.step import step_of

# Measured on the small demo (docs/decisions.md#does-the-papers-recipe-learn): two runs of
# the paper's 500-epoch recipe with the original patch normalisation learn, after about 100
# epochs near a constant predictor (validation SROCC near 0.07; its 10-epoch mean first
# passes 0.1 at epochs 96 and 90, 0.2 at 114 and 136)
RECIPE_PLATEAU = ("; note: with patches.normalisation=reference expect a long plateau near a constant "
                  "predictor (about 100 epochs on the demo) before validation SROCC climbs; see "
                  "docs/decisions.md#does-the-papers-recipe-learn")

# Measured by benchmarks/fused_throughput.py on a 2-core machine: fused splits train at
# 0.65-0.85x the speed of the same splits one after another
FUSED_ON_CPU = ("; note: fused splits are slower than one after another on a CPU (0.65-0.85x "
                "on a 2-core machine, benchmarks/fused_throughput.py): they are for a GPU")


def first_line(cfg, dist, numerics) -> str:
    """The run's first log line: its profile, network, device, step and precision, and every
    deviation from the network's recipe."""
    settings, device = Settings(cfg), dist.device
    t = settings.train
    deviations = config_mod.deviations_from_paper(cfg)
    network = settings.model.name
    same = ("the paper's protocol" if spec_of(cfg).recipe_published
            else f"the {network} recipe (docs/models.md)")
    fused = t.concurrent_splits == "fused"
    step = step_of(t.step, device, dist.world)
    if fused:
        step += (", splits fused (rounds eager, not compiled; scoring compiled)" if step == "compile"
                 else ", splits fused")
    precision = ("bfloat16 autocast" if amp_dtype_of(cfg, device) else
                 "float32 with TF32" if numerics["tf32"] else "float32")
    line = (f"profile {t.profile} on {settings.dataset.name}, model {network}, device {device}, "
            f"step {step}, {precision}: " + ("; ".join(deviations) if deviations else same))
    line += recipe_plateau_note(cfg)
    if fused and device.type == "cpu":  # allowed, so that a CPU shows what a GPU would train
        line += FUSED_ON_CPU
    return line


def recipe_plateau_note(cfg) -> str:
    """The first log line's note for the paper's network with the original patch
    normalisation: its recipe learns on the demo after a long plateau."""
    settings = Settings(cfg)
    if settings.model.name != "bourbia2021" or settings.patches.normalisation != "reference":
        return ""
    return RECIPE_PLATEAU

"""The networks: one file per family, a plain dict from `model.name` to its builder.

    bourbia2021  Bourbia et al., ICIP 2021: the paper's multi-task CNN (the default)
    multiscore   Messai & Chetouani, ICIP 2022: Multi-score SIQA (global, left, right, stereo)
    stereoqanet  Zhou, Chen & Li, IEEE TIP 2019: StereoQA-Net
    padnet       Xu et al. 2020: PAD-Net (predictive auto-encoding + ResNet-18)
    tiny         not a method: the paper network's inputs and outputs in 20k parameters,
                 for smoke runs of a database or the pipeline (and the test suite)

Each network carries `spec` (siqa.models.spec.InputSpec): what it consumes and predicts, its
training recipes and whether it takes the optional NSS head. Adding a network is its file
and one line in MODELS. docs/models.md gives each one's source, what was checked against
the original, and every deviation. Building a run's network from its config:
siqa/build.py.
"""
from siqa.errors import UserError
from siqa.models import bourbia2021, multiscore, padnet, stereoqanet, tiny
from siqa.models.spec import InputSpec

__all__ = ["DEFAULT", "MODELS", "InputSpec", "check_name", "count_parameters", "create_model",
           "list_models"]

DEFAULT = "bourbia2021"

# name -> builder (the network's class: MODELS[name]() is a freshly initialised network,
# MODELS[name].spec what it consumes and predicts, without building it)
MODELS = {
    "bourbia2021": bourbia2021.MultiTaskSIQA,
    "multiscore": multiscore.MultiScore,
    "stereoqanet": stereoqanet.StereoQANet,
    "padnet": padnet.PADNet,
    "tiny": tiny.TinySIQA,
}


def list_models() -> list:
    """The names `model.name` accepts."""
    return sorted(MODELS)


def check_name(name) -> str:
    if name not in MODELS:
        raise UserError(f"config key model.name: unknown network {name!r}; "
                        f"known: {', '.join(list_models())}")
    return name


def create_model(name=DEFAULT, **kwargs):
    """A freshly initialised network (from torch's current random state)."""
    return MODELS[check_name(name)](**kwargs)


def count_parameters(model) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

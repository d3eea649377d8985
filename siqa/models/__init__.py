"""The networks: one file per family, a plain dict from `model.name` to its builder.

    bourbia2021  Bourbia et al., ICIP 2021: the paper's multi-task CNN (the default)
    multiscore   Messai & Chetouani, ICIP 2022: Multi-score SIQA (global, left, right, stereo)
    stereoqanet  Zhou, Chen & Li, IEEE TIP 2019: StereoQA-Net
    padnet       Xu et al. 2020: PAD-Net (predictive auto-encoding + ResNet-18)

Each network carries `spec` (siqa.models.spec.InputSpec): what it consumes and predicts.
multiscore, padnet and stereoqanet take `nss_head=True`: a linear 108-output NSS head on their
fused features, trained with train.nss_weight > 0 (`nss_head_of(cfg)`; docs/models.md).
docs/models.md gives each one's source, what was checked against the original, and every
deviation.
"""
from siqa.errors import UserError
from siqa.models import bourbia2021, multiscore, padnet, stereoqanet
from siqa.models.spec import InputSpec  # noqa: F401

__all__ = ["DEFAULT", "MODELS", "NSS_HEAD", "InputSpec", "check_name", "count_parameters",
           "create_model", "list_models", "model_kwargs", "name_of", "nss_head_of", "spec_of"]

DEFAULT = "bourbia2021"

# name -> builder (the network's class: MODELS[name]() is a freshly initialised network,
# MODELS[name].spec what it consumes and predicts, without building it)
MODELS = {
    "bourbia2021": bourbia2021.MultiTaskSIQA,
    "multiscore": multiscore.MultiScore,
    "stereoqanet": stereoqanet.StereoQANet,
    "padnet": padnet.PADNet,
}


def list_models() -> list:
    """The names `model.name` accepts."""
    return sorted(MODELS)


def check_name(name) -> str:
    if name not in MODELS:
        raise UserError(f"config key model.name: unknown network {name!r}; "
                        f"known: {', '.join(list_models())}")
    return name


def name_of(cfg) -> str:
    """The network of a config; a checkpoint written before model.name existed is bourbia2021."""
    return (cfg.get("model") or {}).get("name") or DEFAULT


# networks that take an optional NSS head (nss_head=True) when train.nss_weight > 0
NSS_HEAD = ("multiscore", "padnet", "stereoqanet")


def nss_head_of(cfg) -> bool:
    """Whether the network of `cfg` carries the optional NSS head: multiscore or stereoqanet
    with train.nss_weight > 0 (`auto` is 0 for them, so no head)."""
    weight = ((cfg.get("train") or {}).get("nss_weight")) or 0
    return name_of(cfg) in NSS_HEAD and weight != "auto" and float(weight) > 0


def model_kwargs(cfg) -> dict:
    """The builder's arguments for `cfg` ({} = the network as its original)."""
    return {"nss_head": True} if nss_head_of(cfg) else {}


def spec_of(cfg):
    """The InputSpec of the network `cfg` builds (without building it)."""
    spec = MODELS[name_of(cfg)].spec
    return spec.with_nss() if nss_head_of(cfg) else spec


def create_model(name=DEFAULT, **kwargs):
    """A freshly initialised network (from torch's current random state)."""
    return MODELS[check_name(name)](**kwargs)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""The network of a run: built from its config (training), or loaded from its checkpoint
(evaluation, scoring). The one place that reads a config to make a model; siqa/models only
knows networks and their specs.

    cfg  --model.name, model_kwargs-->  MODELS[model.name](**kwargs)  --channels_last-->  model
    checkpoint  --load_model-->  the same network, its weights, eval mode, the run's numerics
"""
from pathlib import Path

import torch

from siqa.checkpoint import load_checkpoint
from siqa.config import upgrade
from siqa.device import configure_run_numerics
from siqa.errors import UserError
from siqa.models import MODELS, count_parameters
from siqa.settings import Settings


def read_checkpoint(path, map_location="cpu", required=("model", "config", "database")) -> dict:
    """A checkpoint of a run (siqa.checkpoint.load_checkpoint), its config made current
    (siqa.config.upgrade): what evaluation, scoring and export read."""
    state = load_checkpoint(path, map_location=map_location, required=required)
    state["config"] = upgrade(state["config"], state.get("model"))
    return state


def nss_head_of(cfg) -> bool:
    """Whether the network of `cfg` carries its optional NSS head: a network whose spec
    offers one (`spec.nss_head`) with train.nss_weight > 0 (`auto` is 0 for them, so no head)."""
    settings = Settings(cfg)
    weight = settings.train.nss_weight
    return MODELS[settings.model.name].spec.nss_head and weight != "auto" and float(weight) > 0


def model_kwargs(cfg) -> dict:
    """The builder's arguments for `cfg` ({} = the network as its original)."""
    return {"nss_head": True} if nss_head_of(cfg) else {}


def spec_of(cfg):
    """The InputSpec of the network `cfg` builds (without building it)."""
    spec = MODELS[Settings(cfg).model.name].spec
    return spec.with_nss() if nss_head_of(cfg) else spec


def amp_dtype_of(cfg, device):
    """bfloat16 autocast where the run asked for it (train.amp) and can have it (CUDA)."""
    return torch.bfloat16 if Settings(cfg).train.amp and device.type == "cuda" else None


def build_model(cfg, device):
    """The network in the memory layout the run trained it in (evaluation must use the same
    layout to reproduce the run's numbers bit for bit)."""
    settings = Settings(cfg)
    model = MODELS[settings.model.name](**model_kwargs(cfg)).to(device)
    if settings.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_init(model, cfg):
    """model.init: pre-trained weights of part of the network (PAD-Net's auto-encoder)."""
    network = Settings(cfg).model
    if not network.init:
        return
    check_init(cfg)
    try:
        model.load_pretrained(torch.load(network.init, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError) as err:
        raise UserError(f"model.init: {network.init} does not fit model.name={network.name} "
                        f"({str(err).splitlines()[0][:200]})") from None


def check_init(cfg):
    """UserError (one line) for a model.init the network cannot take or that is missing."""
    network = Settings(cfg).model
    path, name = network.init, network.name
    if path and not hasattr(MODELS[name], "load_pretrained"):
        raise UserError(f"model.init: model.name={name} has no pre-trained part")
    if path and not Path(path).is_file():
        raise UserError(f"model.init: file not found: {path}")


def load_model(state, device, source="the checkpoint"):
    """The checkpoint's network on `device`, in evaluation mode, with the numerics its run
    trained under (siqa.device.configure_run_numerics: evaluate.py, the matrix and
    siqa.load all come through here). `state`: a checkpoint as `read_checkpoint` returns it."""
    cfg = state["config"]
    configure_run_numerics(cfg, device)
    model = build_model(cfg, device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else repr(err))[:200]
        raise UserError(f"checkpoint {source} does not fit this model ({detail}); it was written "
                        "by another model version: retrain, or use a matching checkpoint") from None
    return model.eval()


def model_card(cfg) -> dict:
    """The network of a run: model.name, its parameter count and its InputSpec, with the NSS
    head where the run has one (`nss_head`; built on the meta device, under a forked RNG:
    nothing is allocated and no random state moves)."""
    name, kwargs = Settings(cfg).model.name, model_kwargs(cfg)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        parameters = count_parameters(MODELS[name](**kwargs))
    return {"name": name, "parameters": parameters, "nss_head": bool(kwargs.get("nss_head")),
            "spec": spec_of(cfg).as_dict()}

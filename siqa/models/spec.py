"""What a network consumes and predicts: the data pipeline asks the model, not its name.

Every network of `siqa.models` carries a `spec` (an `InputSpec`), as a timm model carries
its `pretrained_cfg`. siqa/data/inputs.py cuts the patches the spec asks for, builds the
targets of the outputs it names, and siqa/training/step.py weighs one loss per output:

    patches:  `channels` (1: PIL 'L' grey, 3: PIL 'RGB') views, cut into `patch` x `patch`
              squares whose top-left corners follow `grid` with step `stride`:
                exclusive  range(0, H - patch, stride)      (the paper's code, Multi-score's)
                inclusive  range(0, H - patch + 1, stride)  (StereoQA-Net: every whole patch)
                cover      the fewest evenly spaced crops that cover the view (PAD-Net's
                           six 256x256 crops of a 640x360 view: corners x 0/192/384, y 0/104)
    training: `train_crop`
                grid         the training split is cut on the grid, as validation and test
                random       each epoch one `patch` x `patch` crop of each training pair at a
                             random corner shared by both views, flipped left-right and
                             up-down (each with probability 1/2, both views alike), drawn
                             from (seed, epoch): PAD-Net's training draw; evaluation keeps
                             the grid
    values:   `normalisation`
                local        (p - mean) / (std + C) in a 7x7 window, C from
                             patches.normalisation (the paper's network, siqa/data/patches.py)
                unit         intensities / 255 (torchvision's to_tensor)
                standardise  / 255, then per pixel and channel (x - mean) / std, mean and std
                             of each view over the TRAINING split's patches; the network holds
                             them as buffers (`set_standardisation`), so a checkpoint scores
                             with its own training statistics
    outputs:  the forward returns one tensor per name of `outputs`, in that order; the first
              is always "quality" (the image score is the mean of its patch values). Targets:
                quality, stereo  the pair's score
                left, right      the per-view scores (a database that carries them)
                nss              the 108 NSS targets (weight train.nss_weight): bourbia2021's
                                 task 1, or the optional NSS head of multiscore,
                                 padnet and stereoqanet (built with nss_head=True, their
                                 spec then an instance attribute: `with_nss()` of the
                                 class's)
              loss = sum over outputs of weight * loss(output, target), weights from
              `loss_weights` (1 where not named; nss always train.nss_weight); the loss
              of the score outputs is `score_loss` (l1, or mse: PAD-Net's), of nss L1.
    training: `recipes`
                {"paper": {...}, "short": {...}}: the value of every config key that may be
                `auto` (siqa/config.py), by train.profile; `paper` is the network's original
                recipe (`recipe_published` False where none was released and the row is this
                project's), `short` a run that learns within minutes on a 2-core CPU. A key a
                network does not use (patches.normalisation of a non-local network) may be
                left out: it takes the default network's value, recorded and unused.
              `nss_head`: the network takes the optional linear NSS head (built with
                nss_head=True when train.nss_weight > 0); the paper's network predicts NSS
                on its own.
"""
from dataclasses import dataclass, field, replace

GRIDS = ("exclusive", "inclusive", "cover")
NSS_DIM = 108  # the NSS targets of siqa.nss (bourbia2021's task 1), an `nss` output's width
TRAIN_CROPS = ("grid", "random")
SCORE_LOSSES = ("l1", "mse")
NORMALISATIONS = ("local", "unit", "standardise")
VIEW_OUTPUTS = ("left", "right")


@dataclass(frozen=True)
class InputSpec:
    patch: int = 32
    stride: int = 24
    grid: str = "exclusive"
    channels: int = 1
    normalisation: str = "local"
    outputs: tuple = ("quality", "nss")
    loss_weights: tuple = ()  # ((output, weight), ...); 1.0 where an output is not named
    train_crop: str = "grid"
    score_loss: str = "l1"  # of the score outputs (quality, stereo, left, right); nss: L1
    recipes: dict = field(default_factory=dict, compare=False, hash=False)  # profile -> {key: value}
    recipe_published: bool = True
    nss_head: bool = False  # takes the optional NSS head (nss_head=True)

    def __post_init__(self):
        assert self.grid in GRIDS and self.normalisation in NORMALISATIONS
        # random crops are drawn from the raw views: no statistics of a fixed patch set
        assert self.train_crop in TRAIN_CROPS and self.score_loss in SCORE_LOSSES
        assert self.train_crop == "grid" or self.normalisation == "unit"
        assert self.channels in (1, 3) and self.outputs[0] == "quality"

    def weight(self, output) -> float:
        return float(dict(self.loss_weights).get(output, 1.0))

    @property
    def predicts_nss(self) -> bool:
        return "nss" in self.outputs

    @property
    def needs_view_scores(self) -> bool:
        return any(o in VIEW_OUTPUTS for o in self.outputs)

    def with_nss(self) -> "InputSpec":
        """This spec with the `nss` output appended (a network built with its NSS head)."""
        return self if self.predicts_nss else replace(self, outputs=self.outputs + ("nss",))

    def as_dict(self) -> dict:
        return {"patch": self.patch, "stride": self.stride, "grid": self.grid,
                "channels": self.channels, "normalisation": self.normalisation,
                "outputs": list(self.outputs), "loss_weights": dict(self.loss_weights),
                "train_crop": self.train_crop, "score_loss": self.score_loss}

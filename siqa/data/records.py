"""The one record type every database loader yields."""
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StereoPair:
    """One rated stereo pair.

    `right is None` means `left` is a side-by-side file (left half = left view).
    """

    name: str  # unique within its database (relative path of the distorted file)
    left: Path
    right: Path | None
    score: float  # as the database gives it (DMOS or MOS)
    higher_is_better: bool  # False for DMOS (LIVE, demo), True for MOS (Waterloo)
    content: str  # reference scene id: splits never share one
    distortion: str  # 'jp2k', 'jpeg', 'wn', 'blur', 'ff', 'pristine', or the CSV's label
    symmetric: bool | None = None  # None where the database does not say
    # (left, right) per-view scores on the pair's scale, where the database has them (the
    # demo's full-reference model; Waterloo-IVC's per-view MOS): Multi-score SIQA's targets
    view_scores: tuple | None = None

    @property
    def files(self):
        return (self.left,) if self.right is None else (self.left, self.right)


def database_info(name, pairs) -> dict:
    """What a checkpoint records of the database it learnt: its name, the direction and the
    range of its scores (the scale every prediction of the model is on)."""
    scores = [p.score for p in pairs]
    return {
        "name": name,
        "higher_is_better": bool(pairs[0].higher_is_better),
        "score_min": float(min(scores)),
        "score_max": float(max(scores)),
    }


def describe_scale(info) -> str:
    """One line on the scale of a `database_info`."""
    kind = "MOS, higher = better" if info["higher_is_better"] else "DMOS, higher = worse"
    return (f"scores on the scale of the {info['name']} database ({kind}; "
            f"its scores span {info['score_min']:.4g} .. {info['score_max']:.4g})")

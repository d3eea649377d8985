"""What a training run shows while it trains: TensorBoard curves and scatter plots.

    per epoch       train/loss_total, loss_quality, loss_nss, train/lr
    per validation  val/srocc, plcc, rmse, plcc_logistic
    every k-th      val/scatter (train.scatter_every validations, and the last)
    at the end      the resolved config as hparams, with the test metrics

Each run writes into its own folder under tensorboard.dir (`tensorboard_name`), and a
resumed run purges the steps after its last completed epoch, so its curves continue
without a fold.
"""
import hashlib
from pathlib import Path

from siqa import config as config_mod
from siqa.settings import Settings


def tensorboard_name(out_dir) -> str:
    """A run's TensorBoard folder: the last component of out_dir and 8 hex digits of its
    absolute path, so that runs/a/exp and runs/b/exp do not write into one folder, and a
    resumed run (from any working directory) writes into its own."""
    path = str(Path(out_dir).resolve())
    return f"{Path(path).name}-{hashlib.sha256(path.encode('utf-8')).hexdigest()[:8]}"


class Logbook:
    """The TensorBoard writer of one split (rank 0 only: the other ranks have none)."""

    def __init__(self, cfg, run_name, start_epoch):
        from torch.utils.tensorboard import SummaryWriter  # TensorBoard loads slowly

        self.cfg = cfg
        self.writer = SummaryWriter(str(Path(Settings(cfg).tensorboard.dir) / run_name),
                                    purge_step=start_epoch + 1)

    def validation(self, val, epoch):
        for key in ("srocc", "plcc", "rmse", "plcc_logistic"):
            if val.get(key) is not None:
                self.writer.add_scalar(f"val/{key}", val[key], epoch)

    def scatter(self, pred, pairs, epoch):
        """The validation predictions against the scores, coloured by distortion."""
        import matplotlib.pyplot as plt

        from siqa.evaluation.plots import figure_to_array, scatter_figure

        fig = scatter_figure(pred, [p.score for p in pairs], [p.distortion for p in pairs],
                             title=f"validation, epoch {epoch}")
        self.writer.add_image("val/scatter", figure_to_array(fig), epoch, dataformats="HWC")
        plt.close(fig)

    def epoch(self, losses, lr, epoch):
        for key, value in losses.items():
            self.writer.add_scalar(f"train/loss_{key}", value, epoch)
        self.writer.add_scalar("train/lr", lr, epoch)
        self.writer.flush()

    def close(self, report):
        flat = config_mod.flatten(self.cfg)
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}
        test = report["test"] or {}  # None: a run without a test split
        metrics = {f"hparam/test_{k}": test[k] for k in ("srocc", "plcc", "krocc", "rmse")
                   if test.get(k) is not None}
        self.writer.add_hparams(hparams, metrics, run_name=".")
        self.writer.close()

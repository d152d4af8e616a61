"""The command line's flags, each with help and default, grouped as the config groups its settings; a bad flag
is one line. Only the standard library is imported up front (the config's defaults are read when a parser is
built)."""

from __future__ import annotations

import argparse
import re
from typing import Any


def flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, unless the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (what is wrong, where to look) rather than usage + error,
    and ``--l1 -1e-5`` reads as a (negative) number, so the value check can say what is wrong with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_architecture_arg(p: argparse.ArgumentParser) -> None:
    from normlab.nn.models import MODELS

    p.add_argument("--model", default="normlab",
                   help="the network: " + "; ".join(f"{name}: {m.summary}" for name, m in MODELS.items())
                   + "; or yours, FILE.py:NAME or package.module:NAME: a factory given norm= (a registry name) or "
                   "norm_layer= (a channels -> layer factory), and in_channels, num_classes, when it takes them; "
                   "else normlab swaps the norms of what it builds")
    p.add_argument("--norm-first", action="store_true",
                   help="normlab's Net in the papers' block order, conv → norm → ReLU, for the exercise's conv → ReLU "
                   "→ norm (a study variant's +normfirst; default: off)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    from normlab.engine.config import TrainConfig
    from normlab.nn.norms import ALIASES, GROUPS, NORMS, names_where

    add_architecture_arg(p)
    p.add_argument("--norm", default=TrainConfig().norm,
                   help=f"normalization: {', '.join(NORMS)} or an alias ({', '.join(ALIASES)})")
    p.add_argument("--groups", type=int, default=None,
                   help=f"channel groups, for a grouped --norm only ({names_where('grouped')}; default: {GROUPS})")
    p.add_argument("--weight-std", action="store_true",
                   help="Weight Standardization of every conv, with any --norm (a study variant's +ws; default: off)")


def add_train_args(p: argparse.ArgumentParser, study: bool = False, exercise: bool = False) -> None:
    """The training flags; a study sets norm, groups, L1 and seed per run, so it takes the others only.
    main.py (``exercise``) takes L1 from its variant unless --l1 is given."""
    from normlab.engine.config import TrainConfig

    d = TrainConfig()
    if study:
        add_architecture_arg(p)
    else:
        add_model_args(p)
        add_penalty_args(p, d, exercise)
    add_norm_args(p, d)
    add_sgd_args(p, d, study)
    add_data_args(p, d)
    add_machine_args(p, d)


def add_penalty_args(p: argparse.ArgumentParser, d: Any, exercise: bool) -> None:
    if exercise:
        p.add_argument("--l1", type=float, default=None,
                       help="λ of the L1 penalty on conv weights (default: the study's λ for bn+l1, else 0)")
    else:
        p.add_argument("--l1", type=float, default=d.l1, help="λ of the L1 penalty λ·Σ|w| on conv weights")
    p.add_argument("--bn-batch", type=int, default=None, metavar="N",
                   help="ghost batch norm: --norm batch takes its training statistics over groups of N images "
                        "of each batch (default: the whole batch)")
    p.add_argument("--l1-norm-params", action="store_true",
                   help="put the L1 penalty on the norms' γ, β too (default: conv weights only)")


def add_norm_args(p: argparse.ArgumentParser, d: Any) -> None:
    """A norm's own hyperparameters."""
    p.add_argument("--norm-eps", type=float, default=None,
                   help="the norm's ε (default: the norm's own, 1e-5; frn 1e-6)")
    p.add_argument("--norm-momentum", type=float, default=d.norm_momentum,
                   help="momentum of the running averages of a norm with batch statistics")
    p.add_argument("--renorm-r-max", type=float, default=d.renorm_r_max,
                   help="brn (Batch Renorm): the clip of r = σ_B/σ once relaxed")
    p.add_argument("--renorm-d-max", type=float, default=d.renorm_d_max,
                   help="brn: the clip of d = (μ_B − μ)/σ once relaxed")
    p.add_argument("--renorm-from", type=float, default=d.renorm_from,
                   help="brn: plain batch norm for this fraction of the steps, then the clips widen linearly")
    p.add_argument("--renorm-to", type=float, default=d.renorm_to,
                   help="brn: the fraction of the steps at which the clips reach --renorm-r-max, --renorm-d-max")
    p.add_argument("--freeze-bn-epochs", type=int, default=d.freeze_bn_epochs, metavar="K",
                   help="FrozenBN: the last K epochs normalize with the running averages instead of batch "
                        "statistics (a norm with batch statistics only)")


def add_sgd_args(p: argparse.ArgumentParser, d: Any, study: bool) -> None:
    """Regularization, the schedule, augmentation and seed; a study's axes in place of a single run's rate."""
    p.add_argument("--dropout", type=float, default=d.dropout, help="Dropout2d after each conv block")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD's L2 weight decay")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training images")
    p.add_argument("--allow-long", action="store_true",
                   help="accept more than 1,000 epochs (refused by default: more often a typo than a plan)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="images per SGD step" + (", the base of the learning-rate scaling" if study else ""))
    if study:
        p.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="B",
                       help="train every variant and seed at each of these batch sizes; Graph 3 compares them "
                            "(default: --batch-size only)")
        p.add_argument("--ghost", action="store_true",
                       help="make --batch-sizes batch norm's images per statistics group (ghost batch norm, the "
                            "GroupNorm paper's images per GPU) within SGD batches of --batch-size at one --lr; "
                            "norms without batch statistics train once (default: off: real SGD batch sizes)")
        p.add_argument("--lr", type=float, default=None,
                       help=f"peak learning rate of the one-cycle schedule for every run (default: {d.lr:g} at "
                            "--batch-size, scaled linearly with each run's batch size)")
        p.add_argument("--lrs", type=float, nargs="+", default=None, metavar="LR",
                       help="train every variant at each of these peak learning rates (at --batch-size, scaled "
                            "linearly with --batch-sizes) and report each variant at the one its validation "
                            "accuracy chooses; needs --val-size; Graph 4 shows the choice (default: one rate)")
        p.add_argument("--tune-seeds", type=int, nargs="+", default=None, metavar="S",
                       help="with --lrs: the seeds that choose the rate, trained at every rate; the rest of --seeds "
                            "train at each variant's chosen rate only and alone report its test accuracy (default: "
                            "the first 3 of --seeds where there are more, else all of them)")
    else:
        p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--lr-warmup", type=float, default=d.lr_warmup,
                   help="one-cycle: the fraction of the steps in which the rate rises to its peak")
    p.add_argument("--lr-start-div", type=float, default=d.lr_start_div,
                   help="one-cycle: the rate starts at the peak / this")
    p.add_argument("--lr-end-div", type=float, default=d.lr_end_div,
                   help="one-cycle: the rate ends at the start rate / this")
    p.add_argument("--momentum", type=float, default=d.momentum,
                   help=f"SGD momentum, Nesterov (0: plain SGD); one-cycle swings it ±{d.momentum_swing} against "
                        "the learning rate")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help=f"no augmentation of training images (default: grey images a random affine, ±{d.rotate:g}°, "
                        f"±{d.shift:g} px, ±{d.scale * 100:g} %% scale; color images pad-and-crop and a flip)")
    p.add_argument("--crop", type=int, default=d.crop, metavar="PX",
                   help="color images: shift each training image by up to ±PX pixels (pad-and-crop)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="color images: no random horizontal flip (for data whose left and right differ)")
    if not study:
        p.add_argument("--seed", type=int, default=d.seed, help="seeds the weights, data order and augmentation")


def add_data_args(p: argparse.ArgumentParser, d: Any) -> None:
    add_data_source_args(p)
    p.add_argument("--val-size", type=int, default=d.val_size, metavar="N",
                   help="hold out N training images for validation, chosen by the seed (0: none)")
    p.add_argument("--train-limit", type=int, default=None, metavar="N",
                   help="train on the first N training images (default: all, less --val-size)")
    p.add_argument("--test-limit", type=int, default=None, metavar="N",
                   help="test on the first N test images (default: all)")


def add_data_source_args(p: argparse.ArgumentParser) -> None:
    """Which images: what a run trains on, and what fixes the shape of a model's input and output."""
    from normlab.data.datasets import DATASETS
    from normlab.engine.config import TrainConfig

    p.add_argument("--dataset", default=TrainConfig().dataset, metavar="DATA",
                   help=f"the images (a run trains and tests on them; summary takes their shape): "
                        f"{', '.join(DATASETS)}; or your own: npz:FILE.npz "
                        "(x_train, y_train, x_test, y_test uint8 arrays) or folder:DIR (a folder per class, in "
                        "train/ and test/ or split by a fixed seed)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="folder:DIR: decode every image to PX×PX (default: the most common size)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with --dataset's files: MNIST's four IDX files, CIFAR-10's tarball or extracted "
                        "batches (default: normlab's cache, else the offline copy)")
    p.add_argument("--download", action="store_true",
                   help="cifar10: download the official tarball (170 MB) into normlab's cache if it is not there "
                        "(default: off)")


def add_machine_args(p: argparse.ArgumentParser, d: Any) -> None:
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: one per core; in a study, cores ÷ jobs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step: costs seconds up front, pays on 2 CPU cores for batch "
                        "norm only (default: off)")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="on a GPU, launch each step's kernels one by one instead of replaying the step as one CUDA "
                        "graph (default: a graph)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar; the per-epoch table is still printed (default: a bar)")
    p.add_argument("--tensorboard", action="store_true",
                   help="live curves: each run writes TensorBoard event files into its folder's tensorboard/ "
                        "(pip install \"normlab[tensorboard]\"; then tensorboard --logdir OUT)")


def add_out_flags(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=None, help=f"run folder (default: {default})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last finished epoch (default: off)")
    p.add_argument("--force", action="store_true", help="replace the run in --out and start over (default: off)")


def config_from_args(args: argparse.Namespace, check_length: bool = True) -> Any:
    from dataclasses import fields

    from normlab.engine.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None},
                       check_length=check_length)

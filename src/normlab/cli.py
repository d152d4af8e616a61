"""Command line: ``normlab train | summary``. A user's mistake is one line on stderr and exit code 2.

    normlab train --norm group --epochs 20 --seed 0 --out runs/gn
    normlab train --norm batch --l1 1e-5 --out runs/bn_l1
    normlab train --norm layer --epochs 1 --train-limit 5000 --no-progress
    normlab summary --norm group --groups 2
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from normlab.config import TrainConfig
from normlab.errors import UserError
from normlab.norms import ALIASES, NORMS

DEFAULTS = TrainConfig()


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (what is wrong, where to look) rather than usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--norm", default=DEFAULTS.norm,
                   help=f"normalization: {', '.join(NORMS)} or an alias ({', '.join(ALIASES)})")
    p.add_argument("--groups", type=int, default=None, help="group count for --norm group (default 4)")
    p.add_argument("--dropout", type=float, default=DEFAULTS.dropout, help="Dropout2d after each conv block")


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    d = DEFAULTS
    p.add_argument("--l1", type=float, default=d.l1, help="L1 penalty λ on conv weights (0 = off)")
    p.add_argument("--l1-norm-params", action="store_true", help="put the L1 penalty on the norms' γ, β too")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay (L2)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random affine on training images")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-limit", type=int, default=None, metavar="N", help="train on the first N images")
    p.add_argument("--test-limit", type=int, default=None, metavar="N", help="test on the first N images")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="folder with the four MNIST IDX files")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per available core)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def cmd_train(args: argparse.Namespace) -> None:
    from normlab.train import train

    config = config_from_args(args)
    out = Path(args.out or f"runs/{config.norm}_seed{config.seed}")
    result = train(config, out=out, progress=args.progress, force=args.force)
    m = result.metrics[-1]
    print(f"done: test accuracy {m['test_acc']:.2f}% after {config.epochs} epochs, "
          f"{result.parameters} parameters; run folder {out}")


def cmd_summary(args: argparse.Namespace) -> None:
    from normlab.model import Net
    from normlab.summary import format_summary

    print(format_summary(Net(args.norm, args.groups, args.dropout)))


def build_parser() -> Parser:
    parser = Parser(prog="normlab", description="Normalization & regularization study of a small MNIST CNN.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("train", help="train one model and write its run folder")
    add_train_args(p)
    p.add_argument("--out", default=None, help="run folder (default runs/<norm>_seed<seed>)")
    p.add_argument("--force", action="store_true", help="replace a run already in --out")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("summary", help="per-layer table: output shape, receptive field, parameters")
    add_model_args(p)
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"normlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("normlab: interrupted", file=sys.stderr)
        return 130
    return 0

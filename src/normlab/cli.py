"""Command line: ``normlab study | train | summary | explain``. A user's mistake is one line on stderr, exit 2.

    normlab study --epochs 20 --seeds 0 1 2 --out runs/study
    normlab train --norm group --epochs 20 --seed 0 --out runs/gn
    normlab train --norm batch --l1 1e-5 --out runs/bn_l1
    normlab train --norm layer --epochs 1 --train-limit 5000 --no-progress
    normlab summary --norm group --groups 2
    normlab explain --format markdown
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from normlab.config import TrainConfig
from normlab.errors import UserError
from normlab.norms import ALIASES, NORMS
from normlab.train import Interrupted, RunResult, train

DEFAULTS = TrainConfig()


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (what is wrong, where to look) rather than usage + error,
    and ``--l1 -1e-5`` reads as a (negative) number, so the value check can say what is wrong with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--norm", default=DEFAULTS.norm,
                   help=f"normalization: {', '.join(NORMS)} or an alias ({', '.join(ALIASES)})")
    p.add_argument("--groups", type=int, default=None, help="group count for --norm group (default 4)")


def add_train_args(p: argparse.ArgumentParser, study: bool = False) -> None:
    """The training flags; a study sets norm, groups, L1 and seed per run, so it takes the others only."""
    if not study:
        add_model_args(p)
    add_regularization_args(p, l1=not study)
    add_schedule_args(p)
    if not study:
        p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    add_run_args(p)


def add_regularization_args(p: argparse.ArgumentParser, l1: bool) -> None:
    d = DEFAULTS
    if l1:
        p.add_argument("--l1", type=float, default=d.l1, help="L1 penalty λ on conv weights (0 = off)")
        p.add_argument("--l1-norm-params", action="store_true", help="put the L1 penalty on the norms' γ, β too")
    p.add_argument("--dropout", type=float, default=d.dropout, help="Dropout2d after each conv block")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay (L2)")


def add_schedule_args(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum, Nesterov (0: plain SGD)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random affine on training images")


def add_run_args(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--train-limit", type=int, default=None, metavar="N", help="train on the first N images")
    p.add_argument("--test-limit", type=int, default=None, metavar="N", help="test on the first N images")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="folder with the four MNIST IDX files")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per available core)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step: costs seconds up front; on 2 CPU cores it pays for batch "
                        "norm only (docs/performance.md)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def cmd_train(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    out = Path(args.out or f"runs/{config.norm}_seed{config.seed}")
    result = train(config, out=out, progress=args.progress, force=args.force, resume=args.resume)
    raise_if_failed(result, out)
    m = result.metrics[-1]
    print(f"done: test accuracy {m['test_acc']:.2f}% after {config.epochs} epoch{'s' * (config.epochs != 1)}, "
          f"{result.parameters} parameters; run folder {out}")


def cmd_study(args: argparse.Namespace) -> None:
    from normlab.study import run_study

    run_study(Path(args.out), args.variants, args.seeds, config_from_args(args), progress=args.progress,
              jobs=args.jobs)


def cmd_explain(args: argparse.Namespace) -> None:
    from normlab.explain import explain

    print(explain(args.format))


def cmd_summary(args: argparse.Namespace) -> None:
    from normlab.model import Net
    from normlab.summary import format_summary

    print(format_summary(Net(args.norm, args.groups)))


def cmd_exercise(args: argparse.Namespace) -> None:
    """main.py: one model of the study, chosen as in the exercise (--norm bn+l1|bn|group|layer), and its grid."""
    from normlab.data import load_mnist
    from normlab.study import parse_variant, save_misclassified

    variant = parse_variant(args.norm)
    args.norm, args.l1 = variant.norm, variant.l1 if args.l1 is None else args.l1
    args.groups = variant.groups if args.groups is None else args.groups
    config = config_from_args(args)
    out = Path(args.out or f"runs/main/{variant.folder}_seed{config.seed}")
    data = load_mnist(config.data_dir)
    result = train(config, out=out, data=data, progress=args.progress, force=args.force, resume=args.resume)
    raise_if_failed(result, out)
    label = f"{variant.name} ({config.norm}, L1 λ={config.l1:g}), seed {config.seed}, {config.epochs} epochs"
    device = next(result.model.parameters()).device
    grid = save_misclassified(out, variant.folder, result.model, data.limit(None, config.test_limit),
                              device, label, {"variant": variant.name, "seed": config.seed})
    print(f"done: test accuracy {result.final_test_acc:.2f}%; run folder {out}, grid {out / grid}")


def exercise_main(argv: list[str] | None = None) -> int:
    p = Parser(prog="main.py", description="Train one model of the normalization study, as in the exercise. "
               "--norm takes bn+l1 (batch norm with the study's L1 penalty), bn, group, layer, "
               "any other norm or alias, or gn:G for G groups.")
    add_train_args(p)
    p.set_defaults(l1=None)  # None: the variant's own (bn+l1 has the study's λ, the others none)
    p.add_argument("--out", default=None, help="run folder (default runs/main/<norm>_seed<seed>)")
    add_out_flags(p)
    return _run(p, argv, cmd_exercise)


def add_out_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="discard the run in --out and start over")


class RunFailed(Exception):
    """A run ended without a result (its loss became non-finite): exit code 1, not a usage error."""


def raise_if_failed(result: RunResult, out: Path) -> None:
    if result.failed is not None:
        raise RunFailed(f"run failed at epoch {result.failed['epoch']}, step {result.failed['step']}: "
                        f"{result.failed['reason']}; try a lower --lr (details in {out}/failed.json)")


def build_parser() -> Parser:
    from normlab.study import DEFAULT_VARIANTS

    parser = Parser(prog="normlab", description="Normalization & regularization study of a small MNIST CNN.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("study", help="the standard study: every variant x seed, graphs, grids, report")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help="bn+l1, bn, gn, ln, in, none; gn:G for G groups (default: bn+l1 gn ln)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed (default: 0)")
    add_train_args(p, study=True)
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, one process each (default: one per CPU core; 1 on a GPU)")
    p.add_argument("--out", default="runs/study",
                   help="study folder (default runs/study); the same command again resumes what is unfinished")
    p.set_defaults(func=cmd_study)
    p = sub.add_parser("train", help="train one model and write its run folder")
    add_train_args(p)
    p.add_argument("--out", default=None, help="run folder (default runs/<norm>_seed<seed>)")
    add_out_flags(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("summary", help="per-layer table: output shape, receptive field, parameters")
    add_model_args(p)
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("explain", help="worked example of each normalization on a small tensor")
    p.add_argument("--format", choices=["text", "markdown"], default="text")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser(), argv, None)


def resume_command(prog: str, argv: list[str]) -> str:
    """The command line that continues an interrupted run: the same one (``argv`` holds any subcommand),
    plus --resume unless it is a study, which resumes by itself."""
    extra = [] if argv[:1] == ["study"] or "--resume" in argv else ["--resume"]
    return " ".join(shlex.quote(a) for a in [prog, *argv, *extra])


def _run(parser: Parser, argv: list[str] | None, func: Callable[[argparse.Namespace], None] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        (func or args.func)(args)
    except UserError as e:
        print(f"normlab: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"normlab: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        prog = "python main.py" if parser.prog == "main.py" else "normlab"
        print(f"normlab: {e}; checkpoint written in {e.out}. Resume with:\n  {resume_command(prog, argv)}",
              file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("normlab: interrupted before a checkpoint could be written", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a folder removed under us: the files written before stay intact
        where = f" ({e.filename})" if e.filename else ""
        print(f"normlab: error: {e.strerror or e}{where}; fix that and run the same command again "
              "(add --resume to continue a run)", file=sys.stderr)
        return 2
    return 0

"""Command line: ``normlab study | train | summary | explain`` and main.py. A user's mistake is one line, exit 2.

    normlab study --epochs 20 --seeds 0 1 2 --out runs/study
    normlab train --norm group --epochs 20 --seed 0 --out runs/gn
    normlab summary --norm group --groups 2
    normlab explain --format markdown

Errors below this module name settings by their config names; here they become flags (batch_size ->
--batch-size). Only the standard library is imported up front, so even an early Ctrl-C ends cleanly.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from normlab import __version__
from normlab.errors import Interrupted, RunFailed, UserError, signals_raise_interrupted


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


def add_model_args(p: argparse.ArgumentParser) -> None:
    from normlab.config import TrainConfig
    from normlab.norms import ALIASES, GROUPS, NORMS, names_where

    p.add_argument("--norm", default=TrainConfig().norm,
                   help=f"normalization: {', '.join(NORMS)} or an alias ({', '.join(ALIASES)})")
    p.add_argument("--groups", type=int, default=None,
                   help=f"channel groups, for a grouped --norm only ({names_where('grouped')}; default: {GROUPS})")
    p.add_argument("--weight-std", action="store_true",
                   help="Weight Standardization of every conv, with any --norm (a study variant's +ws; default: off)")


def add_train_args(p: argparse.ArgumentParser, study: bool = False, exercise: bool = False) -> None:
    """The training flags; a study sets norm, groups, L1 and seed per run, so it takes the others only.
    main.py (``exercise``) takes L1 from its variant unless --l1 is given."""
    from normlab.config import TrainConfig
    from normlab.data import DATASETS

    d = TrainConfig()
    if not study:
        add_model_args(p)
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
    p.add_argument("--dropout", type=float, default=d.dropout, help="Dropout2d after each conv block")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD's L2 weight decay")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training images")
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
                            "train at each variant's chosen rate only (default: all of --seeds)")
    else:
        p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--momentum", type=float, default=d.momentum,
                   help=f"SGD momentum, Nesterov (0: plain SGD); one-cycle swings it ±{d.momentum_swing} against "
                        "the learning rate")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help=f"no random affine on training images (default: ±{d.rotate:g}°, ±{d.shift:g} px, "
                        f"±{d.scale * 100:g} %% scale)")
    if not study:
        p.add_argument("--seed", type=int, default=d.seed, help="seeds the weights, data order and augmentation")
    p.add_argument("--dataset", default=d.dataset, help=f"the images to train and test on: {' or '.join(DATASETS)}")
    p.add_argument("--val-size", type=int, default=d.val_size, metavar="N",
                   help="hold out N training images for validation, chosen by the seed (0: none)")
    p.add_argument("--train-limit", type=int, default=None, metavar="N",
                   help="train on the first N training images (default: all 60,000 less --val-size)")
    p.add_argument("--test-limit", type=int, default=None, metavar="N",
                   help="test on the first N test images (default: all 10,000)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the four IDX files of --dataset (default: the cache, else the offline copy)")
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


def add_out_flags(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=None, help=f"run folder (default: {default})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last finished epoch (default: off)")
    p.add_argument("--force", action="store_true", help="replace the run in --out and start over (default: off)")


def config_from_args(args: argparse.Namespace) -> Any:
    from dataclasses import fields

    from normlab.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def train_one(config: Any, out: Path, args: argparse.Namespace, data: Any = None) -> Any:
    """train() for `normlab train` and main.py: a stop says what was kept, a failed run becomes RunFailed."""
    from normlab.runs import CHECKPOINT, read_metrics
    from normlab.train import train

    try:
        result = train(config, out=out, data=data, progress=args.progress, force=args.force, resume=args.resume)
    except Interrupted as e:
        if (out / CHECKPOINT).is_file():
            e.saved = f"epochs 1-{len(read_metrics(out, config))} of {config.epochs} are kept in {out}"
        raise
    if result.failure is not None:
        raise RunFailed(f"run failed at epoch {result.failure['epoch']}, step {result.failure['step']}: "
                        f"{result.failure['reason']}; try a lower --lr (details in {out}/failed.json)")
    return result


def cmd_train(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    out = Path(args.out or f"runs/{config.norm}_seed{config.seed}")
    result = train_one(config, out, args)
    print(f"done: test accuracy {result.final_test_acc:.2f}% after {config.epochs} "
          f"epoch{'s' * (config.epochs != 1)}, {result.parameters} parameters; run folder {out}")


def cmd_study(args: argparse.Namespace) -> None:
    from normlab.study import run_study

    out = Path(args.out)
    if args.lr is not None and args.lrs is not None:
        raise UserError("--lr sets one rate for every run, --lrs several to choose among: give one of them")
    try:
        results = run_study(out, args.variants, args.seeds, config_from_args(args), progress=args.progress,
                            jobs=args.jobs, force=args.force, batch_sizes=args.batch_sizes, lrs=args.lrs,
                            tune_seeds=args.tune_seeds,
                            lr_scaling=args.lr is None, ghost=args.ghost, backend=args.backend,
                            address=args.address)
    except Interrupted as e:
        if any(out.glob("*/*/seed*/metrics.json")):  # else no epoch of any run had finished: nothing to claim
            e.saved = (f"finished runs are kept in {out}" if args.backend == "ray" else
                       f"finished runs, and the finished epochs of the others, are kept in {out}")
        raise
    failed = [f"{r['variant']} seed {r['seed']}" for r in results["runs"] if r["failed"]]
    if failed:
        raise RunFailed(f"{len(failed)} of {len(results['runs'])} runs failed ({', '.join(failed)}): their loss "
                        f"became NaN or infinite; try a lower --lr (the report in {out} lists them)")


def cmd_explain(args: argparse.Namespace) -> None:
    from normlab.explain import explain

    print(explain(args.format))


def cmd_summary(args: argparse.Namespace) -> None:
    from normlab.config import TrainConfig
    from normlab.summary import format_summary

    print(format_summary(TrainConfig(norm=args.norm, groups=args.groups, weight_std=args.weight_std).model()))


def cmd_exercise(args: argparse.Namespace) -> None:
    """main.py: one model of the study, chosen as in the exercise (--norm bn+l1|bn|group|layer), and its grid."""
    from normlab.data import load_dataset
    from normlab.misclassified import save_misclassified
    from normlab.plan import parse_variant

    variant = parse_variant(args.norm)
    if variant.groups is not None and args.groups is not None and variant.groups != args.groups:
        raise UserError(f"--norm {args.norm} has {variant.groups} groups, --groups says {args.groups}: give one")
    args.norm, args.l1 = variant.norm, variant.l1 if args.l1 is None else args.l1
    args.groups = variant.groups if args.groups is None else args.groups
    args.weight_std = args.weight_std or variant.weight_std
    config = config_from_args(args)
    out = Path(args.out or f"runs/main/{variant.folder}_seed{config.seed}")
    data = load_dataset(config.dataset, config.data_dir)
    result = train_one(config, out, args, data)
    label = f"{variant.name} ({config.norm}, L1 λ={config.l1:g}), seed {config.seed}, {config.epochs} epochs"
    device = next(result.model.parameters()).device
    grid = save_misclassified(out, variant.folder, result.model, data.limit(None, config.test_limit),
                              device, label, {"variant": variant.name, "seed": config.seed})
    print(f"done: test accuracy {result.final_test_acc:.2f}%; run folder {out}, grid {out / grid}")


def exercise_parser() -> Parser:
    p = Parser(prog="main.py", description="Train one model of the normalization study, as in the exercise. "
               "--norm takes bn+l1 (batch norm with the study's L1 penalty), bn, group, layer, "
               "any other norm or alias, gn:G for G groups, +ws for Weight Standardization.")
    add_train_args(p, exercise=True)
    add_out_flags(p, "runs/main/<norm>_seed<seed>")
    return p


def build_parser() -> Parser:
    from normlab.norms import ALIASES, NORMS
    from normlab.plan import VARIANTS

    parser = Parser(prog="normlab", description="Normalization & regularization study of a small MNIST CNN.")
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("study", help="every variant × seed, then graphs, grids and a report")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS),
                   help=f"a norm ({', '.join(NORMS)}; aliases {', '.join(ALIASES)}), :G for G groups (gn:2), +ws "
                        f"for Weight Standardization, +l1 for the L1 penalty (default: {' '.join(VARIANTS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed and variant (default: 0)")
    add_train_args(p, study=True)
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, as threads of one process (default: one per CPU core plus one, "
                        "so that no core idles; 3 on a GPU, each on its own CUDA stream)")
    p.add_argument("--backend", default="local",
                   help="where the runs train: local (this machine's cores or GPU) or ray (a Ray cluster; "
                        "pip install 'normlab[ray]')")
    p.add_argument("--address", default=None,
                   help="with --backend ray: the cluster to join, auto (the one started here with `ray start "
                        "--head`) or HOST:PORT (default: a local Ray instance for this study)")
    p.add_argument("--out", default="runs/study", help="study folder; the same command again resumes it")
    p.add_argument("--force", action="store_true",
                   help="retrain runs in --out made with other settings or whose files are broken (default: off)")
    p.set_defaults(func=cmd_study)
    p = sub.add_parser("train", help="train one model and write its run folder")
    add_train_args(p)
    add_out_flags(p, "runs/<norm>_seed<seed>")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("summary", help="per-layer table: output shape, receptive field, parameters")
    add_model_args(p)
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("explain", help="worked example of each normalization on a small tensor")
    p.add_argument("--format", choices=["text", "markdown"], default="text", help="plain text or markdown tables")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser, argv, None)


def entry() -> None:
    """The ``normlab`` command. A study stopped by a signal leaves no run training (each stopped at its next
    step), but PyTorch's teardown at exit can still abort (SIGABRT, "terminate called without an active
    exception") after threads trained in it: such an exit skips the teardown, with its output flushed."""
    exit_now(main())


def exit_now(code: int) -> None:
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def exercise_main(argv: list[str] | None = None) -> int:
    return _run(exercise_parser, argv, cmd_exercise)


def resume_command(prog: str, argv: list[str]) -> str:
    """The command line that continues an interrupted run: the same one (``argv`` holds any subcommand),
    plus --resume unless it is a study, which resumes by itself."""
    extra = [] if argv[:1] == ["study"] or "--resume" in argv else ["--resume"]
    return " ".join(shlex.quote(a) for a in [prog, *argv, *extra])


def _run(make_parser: Callable[[], Parser], argv: list[str] | None,
         func: Callable[[argparse.Namespace], None] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        with signals_raise_interrupted():
            parser = make_parser()
            args = parser.parse_args(argv)
            (func or args.func)(args)
    except UserError as e:
        print(f"normlab: error: {e.render(flag)}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"normlab: {e}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as e:
        stopped = e if isinstance(e, Interrupted) else Interrupted(2)  # Ctrl-C before the handler was in place
        if not stopped.saved:
            print(f"normlab: {stopped}; nothing was saved", file=sys.stderr)
        else:
            prog = "python main.py" if func is cmd_exercise else "normlab"
            print(f"normlab: {stopped}; {stopped.saved}. Resume with:\n  {resume_command(prog, argv)}",
                  file=sys.stderr)
        return stopped.code
    except OSError as e:  # a full disk, a folder removed under us: the files written before stay intact
        where = f" ({e.filename})" if e.filename else ""
        resume = "" if argv[:1] == ["study"] else " (add --resume to continue a run)"
        print(f"normlab: error: {e.strerror or e}{where}; fix that and run the same command again{resume}",
              file=sys.stderr)
        return 2
    return 0

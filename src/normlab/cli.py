"""Command line: ``normlab study | train | summary | explain`` and main.py. A user's mistake is one line, exit 2.

    normlab study --epochs 20 --seeds 0 1 2 --out runs/study
    normlab train --norm group --epochs 20 --seed 0 --out runs/gn
    normlab summary --norm group --groups 2
    normlab explain --format markdown

Errors below this module name settings by their config names; here they become flags (batch_size ->
--batch-size). A signal is one line and exit 130/143 in every phase: while torch and the rest import and as
the process exits, ``finish`` ends it at once; during the work it raises Interrupted, which saves what can be.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from normlab import __version__
from normlab.errors import (
    Interrupted,
    RunFailed,
    UserError,
    exit_on_signal,
    guard_output,
    print_result,
    say,
    shown,
    signals_raise_interrupted,
)
from normlab.flags import (
    Parser,
    add_data_source_args,
    add_model_args,
    add_out_flags,
    add_train_args,
    config_from_args,
    flag,
)

# importing these imports torch, numpy, matplotlib and all of normlab
PRELOADED = ("normlab.study.study", "normlab.report.explain", "normlab.report.summary")


def train_one(config: Any, out: Path, args: argparse.Namespace, data: Any = None) -> Any:
    """train() for `normlab train` and main.py: a stop says what was kept, a failed run becomes RunFailed."""
    from normlab.engine.checkpoint import load_checkpoint
    from normlab.engine.runfiles import CHECKPOINT
    from normlab.engine.train import train

    try:
        result = train(config, out=out, data=data, progress=args.progress, force=args.force, resume=args.resume)
    except Interrupted as e:
        if (out / CHECKPOINT).is_file():  # its own rows: a stop between it and metrics.json finds them there
            epochs = len(load_checkpoint(out / CHECKPOINT)["metrics"])
            e.saved = f"epochs 1-{epochs} of {config.epochs} are kept in {out}"
        raise
    if result.failure is not None:
        raise RunFailed(f"run failed at epoch {result.failure['epoch']}, step {result.failure['step']}: "
                        f"{result.failure['reason']}; try a lower --lr (details in {out}/failed.json)")
    return result


def cmd_train(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    out = Path(args.out or f"runs/{config.norm}_seed{config.seed}")
    result = train_one(config, out, args)
    say(f"done: test accuracy {result.final_test_acc:.2f}%{other_statistics(result.evaluation)} after "
        f"{config.epochs} epoch{'s' * (config.epochs != 1)}, {result.parameters} parameters; run folder {out}")


def other_statistics(evaluation: dict[str, float] | None) -> str:
    """A BN run's test accuracy under PreciseBN and the test batch's own statistics (engine.evalstats), in words."""
    if not evaluation:
        return ""
    return f" (PreciseBN {evaluation['precise']:.2f}%, test batch statistics {evaluation['batch']:.2f}%)"


def cmd_study(args: argparse.Namespace) -> None:
    from normlab.study.study import run_study

    out = Path(args.out)
    if args.lr is not None and args.lrs is not None:
        raise UserError("--lr sets one rate for every run, --lrs several to choose among: give one of them")
    try:
        base = config_from_args(args, check_length=not args.batch_sizes or args.ghost)  # real batches: per run
        results = run_study(out, args.variants, args.seeds, base, progress=args.progress,
                            jobs=args.jobs, force=args.force, batch_sizes=args.batch_sizes, lrs=args.lrs,
                            tune_seeds=args.tune_seeds,
                            lr_scaling=args.lr is None, ghost=args.ghost, backend=args.backend,
                            address=args.address, fuse=args.fuse, test_stats=args.test_stats,
                            margin=args.margin, extend_edges=args.extend_edges)  # margin None: stats.MARGIN
    except Interrupted as e:
        # a finished epoch of any run: its metrics.json, or its checkpoint (a stop can fall between the two)
        if any(out.glob("*/*/seed*/metrics.json")) or any(out.glob("*/*/seed*/checkpoint.pt")):
            e.saved = f"finished runs, and the finished epochs of the others, are kept in {out}"
        raise
    failed = [f"{r['variant']} seed {r['seed']}" for r in results["runs"] if r["failed"]]
    if failed:
        raise RunFailed(f"{len(failed)} of {len(results['runs'])} runs failed ({', '.join(failed)}): their loss "
                        f"became NaN or infinite; try a lower --lr (the report in {out} lists them)")


def cmd_explain(args: argparse.Namespace) -> None:
    from normlab.report.explain import explain

    print_result(explain(args.format))


def cmd_summary(args: argparse.Namespace) -> None:
    from normlab.engine.config import TrainConfig
    from normlab.report.summary import format_summary

    config = TrainConfig(model=args.model, norm=args.norm, groups=args.groups, weight_std=args.weight_std,
                         norm_first=args.norm_first, dataset=args.dataset, data_dir=args.data_dir,
                         image_size=args.image_size, download=args.download, check_length=False)
    print_result(format_summary(config.build_model(), config.data_info.image_shape))


def cmd_exercise(args: argparse.Namespace) -> None:
    """main.py: one model of the study, chosen as in the exercise (--norm bn+l1|bn|group|layer), and its grid."""
    from normlab.data.datasets import load_dataset
    from normlab.report.misclassified import save_misclassified
    from normlab.study.plan import parse_variant

    typed, variant = args.norm, parse_variant(args.norm)
    if variant.groups is not None and args.groups is not None and variant.groups != args.groups:
        raise UserError(f"--norm {args.norm} has {variant.groups} groups, --groups says {args.groups}: give one")
    args.norm, args.l1 = variant.norm, variant.l1 if args.l1 is None else args.l1
    args.groups = variant.groups if args.groups is None else args.groups
    args.weight_std = args.weight_std or variant.weight_std
    args.norm_first = args.norm_first or variant.norm_first
    args.freeze_bn_epochs = args.freeze_bn_epochs or variant.frozen_epochs
    try:
        config = config_from_args(args)
    except UserError as e:  # a value the variant gave (bn+frozen5 in 1 epoch): name it as the user typed it
        if e.setting == "freeze_bn_epochs" and variant.frozen_epochs and args.freeze_bn_epochs == variant.frozen_epochs:
            raise UserError(f"+frozen{variant.frozen_epochs} {e.message}", "norm",
                            typed) from None
        raise
    out = Path(args.out or f"runs/main/{variant.folder}_seed{config.seed}")
    data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size,
                        download=config.download)
    result = train_one(config, out, args, data)
    label = f"{variant.name} ({config.norm}, L1 λ={config.l1:g}), seed {config.seed}, {config.epochs} epochs"
    device = next(result.model.parameters()).device
    grid = save_misclassified(out, variant.folder, result.model, data.limit(None, config.test_limit),
                              device, label, {"variant": variant.name, "seed": config.seed})
    say(f"done: test accuracy {result.final_test_acc:.2f}%{other_statistics(result.evaluation)}; run folder {out}, "
        f"grid {out / grid}")


def exercise_parser() -> Parser:
    p = Parser(prog="main.py", description="Train one model of the normalization study, as in the exercise. "
               "--norm takes bn+l1 (batch norm with the study's L1 penalty), bn, group, layer, "
               "any other norm or alias, gn:G for G groups, +ws for Weight Standardization.")
    add_train_args(p, exercise=True)
    add_out_flags(p, "runs/main/<norm>_seed<seed>")
    return p


def build_parser() -> Parser:
    from normlab.nn.norms import ALIASES, NORMS
    from normlab.study.plan import VARIANTS

    parser = Parser(prog="normlab", description="Normalization & regularization study of a small MNIST CNN.")
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("study", help="every variant × seed, then graphs, grids and a report")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS),
                   help=f"a norm ({', '.join(NORMS)}; aliases {', '.join(ALIASES)}), :G for G groups (gn:2), +ws "
                        "for Weight Standardization, +l1 for the L1 penalty, +frozenK for FrozenBN in the last K "
                        "epochs, +normfirst for the papers' block order conv → norm → ReLU (bn+frozen2, gn+normfirst) "
                        f"(default: {' '.join(VARIANTS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed and variant (default: 0)")
    add_train_args(p, study=True)
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, as threads of one process (default: one per CPU core plus one, "
                        "so that no core idles; 3 on a GPU, each on its own CUDA stream)")
    p.add_argument("--fuse", default="auto",
                   help="on: runs that differ only in seed, learning rate, L1, weight decay and norm train as one "
                        "model with every conv grouped by run, one step for all (each run's folder as if trained "
                        "alone); off: each run on its own; auto: on on a GPU, off on a CPU (grouped convs ran "
                        "0.55-0.9x as fast per model as separate ones on 2 cores)")
    p.add_argument("--test-stats", default="moving",
                   help="the test accuracy the tables and findings give a norm with batch statistics: moving (the "
                        "running averages, PyTorch's eval mode), precise (PreciseBN: population statistics of the "
                        "final weights) or batch (the test images' own, in groups of the training group size); "
                        "all three are always in the report's evaluation table")
    p.add_argument("--extend-edges", action="store_true",
                   help="with --lrs: where a variant's chosen rate is the grid's largest or smallest, its tuning "
                        "seeds also train one rate further (the grid's outermost ratio again) and the choice is "
                        "made again, once (default: the grid as given; the report says when a choice sits at its "
                        "edge)")
    p.add_argument("--margin", type=float, default=None,
                   help="the equivalence margin, in test accuracy points: the report calls two variants "
                        "equivalent only where TOST over seeds and over test images puts their difference within "
                        "± this (default 0.2, 20 of 10,000 test images: normlab.report.stats.MARGIN)")
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
    p = sub.add_parser("summary", help="per-layer table: output shape, receptive field, parameters, on the data's "
                       "image shape")
    add_model_args(p)
    add_data_source_args(p)
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("explain", help="worked example of each normalization on a small tensor")
    p.add_argument("--format", choices=["text", "markdown"], default="text", help="plain text or markdown tables")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser, argv, None)


def entry() -> None:
    """The ``normlab`` command."""
    finish(main)


def finish(command: Callable[[], int]) -> None:
    """Run ``command`` and exit with its code, skipping the interpreter's teardown: after torch it takes a second,
    in which Python has put the default signal handlers back (a SIGTERM then kills with no word), and after threads
    trained it can abort (SIGABRT, "terminate called without an active exception"). The output is flushed first;
    a signal outside the work (before it starts, as it exits) is one line too."""
    guard_output()
    exit_on_signal("no work was in progress: nothing is lost")
    code = command()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
    for module in PRELOADED:  # before signals raise: one raised inside an import can leave a module half made
        importlib.import_module(module)
    received: list[int] = []
    try:
        with signals_raise_interrupted() as received:
            parser = make_parser()
            args = parser.parse_args(argv)
            (func or args.func)(args)
            if received:  # a signal that a weakref callback or __del__ swallowed: the work went on to its end
                print(f"normlab: stopped by {signal.Signals(received[0]).name}; it came as the work ended: "
                      "everything is saved", file=sys.stderr)
                return 128 + received[0]
    except UserError as e:
        print(f"normlab: error: {e.render(flag)}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"normlab: {shown(str(e))}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as e:
        stopped = e if isinstance(e, Interrupted) else Interrupted(2)  # Ctrl-C before the handler was in place
        if not stopped.saved:
            if stopped.signum != signal.SIGPIPE:  # a reader that stopped reading (| head) wants no word
                print(f"normlab: {stopped}; nothing was saved", file=sys.stderr)
        else:
            prog = "python main.py" if func is cmd_exercise else "normlab"
            print(f"normlab: {stopped}; {shown(stopped.saved)}. Resume with:\n  {shown(resume_command(prog, argv))}",
                  file=sys.stderr)
        return stopped.code
    except OSError as e:  # a full disk, a folder removed under us: the files written before stay intact
        where = f" ({shown(str(e.filename))})" if e.filename else ""
        resume = "" if argv[:1] == ["study"] else " (add --resume to continue a run)"
        print(f"normlab: error: {e.strerror or e}{where}; fix that and run the same command again{resume}",
              file=sys.stderr)
        return 2
    except Exception:  # Interrupted raised inside C code (torch's, matplotlib's) comes out as another error
        if not received:
            raise
        prog = "python main.py" if func is cmd_exercise else "normlab"
        print(f"normlab: stopped by {signal.Signals(received[0]).name}; what had finished is kept. Resume with:\n"
              f"  {shown(resume_command(prog, argv))}", file=sys.stderr)
        return 128 + received[0]
    return 0

"""python -m training {train,evaluate,export}: see --help of each.

TensorFlow and the training modules are imported by the subcommand that runs, after its arguments are parsed: --help
and a bad argument answer at once instead of after TensorFlow's import (seconds)."""

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import warnings

from contract.tf_logs import quiet_tensorflow_logs

quiet_tensorflow_logs()  # before TensorFlow's import (by the subcommand)

from training.errors import DataError, RunError  # noqa: E402

DEFAULT_RUN_DIR = "runs/default"


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def parser():
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or --resume) a run; a checkpoint is written every epoch")
    t.add_argument("--run-dir", default=DEFAULT_RUN_DIR,
                   help="checkpoints, config, history, TensorBoard logs (default: %(default)s)")
    t.add_argument("--data-dir", help="folder with the four MNIST IDX .gz files (default: download once)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last backup (mid-epoch) or epoch checkpoint")
    t.add_argument("--resume-if-exists", action="store_true",
                   help="--resume when --run-dir holds a run, else start it: one command for a first start and every "
                        "restart (containers, Kubernetes)")
    t.add_argument("--epochs", type=_positive_int, default=50, help="total epochs of the run (default: %(default)s)")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="(default: %(default)s)")
    t.add_argument("--learning-rate", type=_positive_float, default=1e-3,
                   help="Adam's (initial) rate (default: %(default)s)")
    t.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                   help="cosine: decay to --final-lr-fraction of the rate over the run (default: %(default)s)")
    t.add_argument("--final-lr-fraction", type=_fraction, default=0.05,
                   help="the cosine schedule's last rate as a fraction of the first; 0.1 or less is a decay of 10x "
                        "or more (default: %(default)s)")
    t.add_argument("--objective", choices=["elbo", "iwae"], default="elbo",
                   help="elbo: -ELBO (analytic KL); iwae: the importance-weighted bound -IWAE_k (default: %(default)s)")
    t.add_argument("--k", type=_positive_int, default=1,
                   help="posterior samples per image in the objective (default: %(default)s)")
    t.add_argument("--gradient", choices=["standard", "dreg"], default="standard",
                   help="dreg: doubly reparameterized encoder gradients for --objective iwae (default: %(default)s)")
    t.add_argument("--init-from", help="start from the weights of this exported version folder (its architecture), "
                                       "e.g. models/mnist_vae/1; the optimizer starts afresh (default: none)")
    t.add_argument("--validation", choices=["test", "held-out"], default="test",
                   help="the per-epoch validation set: the test digits, or the last 10,000 of the 60,000 training "
                        "digits, held out of training (default: %(default)s)")
    t.add_argument("--validation-k", type=_positive_int, default=10,
                   help="importance samples of the per-epoch validation bound (default: %(default)s)")
    t.add_argument("--backup-every", type=int, default=100,
                   help="steps between mid-epoch backups a restarted run resumes from; 0: none (default: %(default)s)")
    t.add_argument("--strategy", choices=["auto", "one-device", "mirrored", "multi-worker"], default="auto",
                   help="auto: multi-worker when TF_CONFIG is set, mirrored when several GPUs are visible, else one "
                        "device (default: %(default)s)")
    t.add_argument("--cluster-timeout", type=_positive_float, default=120.0,
                   help="multi-worker: seconds to wait for every peer at start, then exit 3 (default: %(default)s)")
    t.add_argument("--step-timeout", type=_positive_float, default=600.0,
                   help="multi-worker: seconds without a finished step (a peer gone) before exit 3 "
                        "(default: %(default)s)")
    t.add_argument("--encoded-size", type=_positive_int, default=16, help="latent dimension d (default: %(default)s)")
    t.add_argument("--base-depth", type=_positive_int, default=32,
                   help="filters of the first conv layer (default: %(default)s)")
    t.add_argument("--beta", type=_non_negative_float, default=1.0, help="weight of the KL term (default: %(default)s)")
    t.add_argument(
        "--bfloat16", action="store_true", help="mixed bfloat16 convolutions (faster on AVX512-BF16/AMX CPUs)"
    )
    t.add_argument("--seed", type=int, default=42, help="weights, shuffling and binarization (default: %(default)s)")
    t.add_argument("--train-limit", type=_positive_int,
                   help="use only the first N training (and test) images (default: all)")

    e = sub.add_parser("evaluate", help="test ELBO and IWAE -log p(x) of a SavedModel or a run's checkpoint")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="an exported SavedModel version folder, e.g. models/mnist_vae/1")
    src.add_argument("--run-dir", help="a training run (its latest checkpoint)")
    e.add_argument("--data-dir", help="folder with the four MNIST IDX .gz files (default: download once)")
    e.add_argument("--k", type=_positive_int, default=100,
                   help="importance samples per image for the IWAE bound (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0,
                   help="posterior noise: test image i uses the stateless seed+i (default: %(default)s)")
    e.add_argument("--calibrate", action="store_true",
                   help="also compute the NLL percentiles the service scores against (grey pixels as given), and the "
                        "likelihood-ratio background model (fitted on the training set) with its llr percentiles")
    e.add_argument("--calibration-k", type=_positive_int, default=32,
                   help="importance samples per image of the calibration, the score route's default k "
                        "(default: %(default)s)")
    e.add_argument("--limit", type=_positive_int, help="evaluate only the first N test images (default: all)")
    e.add_argument("--figures-dir", help="also write the PNG figures here (default: none)")
    e.add_argument("--update-metadata", action="store_true", help="store the metrics in --model-dir's metadata.json")
    e.add_argument("--no-metrics", action="store_true",
                   help="skip the metrics pass (e.g. only --calibrate; bench/evaluate_literature.py computes the "
                        "k=1000 and k=5000 figures resumably)")

    x = sub.add_parser("export", help="export a run's latest checkpoint as a SavedModel <base>/<name>/<version>")
    x.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="the run to export (default: %(default)s)")
    x.add_argument("--from-model", help="take the weights from this exported version folder instead of the run "
                   "(re-export with newer signatures), e.g. models/mnist_vae/1 (default: none)")
    x.add_argument("--base-dir", default="models", help="the version goes in <base>/<name>/ (default: %(default)s)")
    x.add_argument("--model-name", default="mnist_vae", help="(default: %(default)s)")
    x.add_argument("--version", type=_positive_int, help="default: one more than the highest existing version")
    x.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    return p


def evaluate_command(args):
    """The `evaluate` subcommand: print the metrics as JSON; optionally write figures and metadata."""
    import contract
    from training import data, figures
    from training.evaluate import BINARIZATION_SEED, Model, calibrate, evaluate
    from training.export import origin_record

    if args.update_metadata and not args.model_dir:  # before the minutes of evaluation, not after
        raise FileNotFoundError("--update-metadata needs --model-dir (the SavedModel whose metadata.json to update)")
    images, _ = data.load_mnist("test", args.data_dir, limit=args.limit)
    x = data.fixed_binarization(images, seed=BINARIZATION_SEED)
    if args.model_dir:
        model = Model.from_saved_model(args.model_dir)
        record = contract.read_metadata(args.model_dir).get("training") or {}
    else:
        from training.train import read_history, restore_weights

        vae, config, _ = restore_weights(args.run_dir)
        model = Model.from_keras(vae)
        record = {**config, "history": read_history(args.run_dir)}
    metrics = None
    if not args.no_metrics:
        metrics = evaluate(model, x, k=args.k, sampling_seed=args.seed)
        print(json.dumps(dataclasses.asdict(metrics), indent=2))
    calibration = None
    if args.calibrate:
        train_images, _ = data.load_mnist("train", args.data_dir)  # the background model of the likelihood ratio
        calibration = calibrate(model, images, args.calibration_k, args.seed, train_images)
        print(calibration.model_dump_json(indent=2, exclude={"background": {"probs"}}))
    if args.update_metadata:
        meta = contract.read_metadata(args.model_dir)
        if metrics is not None:
            # Keep metrics written by other evaluations (e.g. bench/evaluate_literature.py's) beside these.
            meta["metrics"] = {**(meta.get("metrics") or {}), **dataclasses.asdict(metrics)}
        if calibration is not None:
            meta["calibration"] = calibration.model_dump()
        contract.write_metadata(args.model_dir, meta)
    if args.figures_dir:
        out = pathlib.Path(args.figures_dir)
        stages = figures.lineage(record, origin_record)  # the curve: this run and those it was fine-tuned from
        figures.write_all(out, model, x, stages)
        logging.getLogger("training").info("figures written to %s", out)
    return metrics


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # "Sharding callback duration" at every checkpoint
    # tf_keras warns about the encoder's Lambda layer each time it serializes the model config for a checkpoint;
    # runs are restored from their weights, never from that config.
    warnings.filterwarnings("ignore", "The object being serialized includes a `lambda`", UserWarning)
    args = parser().parse_args(argv)
    if args.command in ("train", "evaluate"):
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        logging.getLogger("training").info(
            "tensorflow %s: %s", tf.__version__,
            f"running on /GPU:0 (GPUs found: {len(gpus)})" if gpus else "no GPU found, running on CPU")
    try:
        if args.command == "train":
            from training.model import ModelConfig
            from training.train import TrainConfig, train

            train(
                args.run_dir,
                ModelConfig(args.encoded_size, args.base_depth, args.beta, args.bfloat16),
                TrainConfig(args.epochs, args.batch_size, args.learning_rate, args.lr_schedule, args.seed,
                            args.train_limit, final_lr_fraction=args.final_lr_fraction, objective=args.objective,
                            k=args.k, gradient=args.gradient, validation=args.validation,
                            validation_k=args.validation_k, init_from=args.init_from,
                            backup_every=args.backup_every),
                data_dir=args.data_dir,
                resume=args.resume or (args.resume_if_exists
                                       and (pathlib.Path(args.run_dir) / "config.json").exists()),
                strategy=args.strategy,
                cluster_timeout=args.cluster_timeout,
                step_timeout=args.step_timeout,
                verbose=2,
            )
        elif args.command == "evaluate":
            evaluate_command(args)
        elif args.command == "export":
            from training.export import export_run

            path = export_run(args.run_dir, args.base_dir, args.model_name, args.version, args.overwrite,
                              from_model=args.from_model)
            print(path)
    except (DataError, RunError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # A collective that failed because a peer went away (multi-worker): one line, not a TensorFlow traceback.
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(e, tf.errors.OpError) or args.command != "train":
            raise
        print(f"error: training stopped by a TensorFlow error ({type(e).__name__}): {str(e).splitlines()[0]}; "
              "rerun every worker with --resume to continue from the last backup", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

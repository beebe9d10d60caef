"""The ``lungct`` command line: parses options and calls library code, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from lungct import __version__
from lungct.errors import LungctError

log = logging.getLogger("lungct")

TRAIN_OPTIONS: dict[str, tuple[type, str]] = {
    "model": (str, "registry model name (see `lungct models`)"),
    "pretrained": (str, "auto | imagenet | none | PATH to a weights file"),
    "epochs": (int, "maximum epochs"),
    "image_size": (int, "square input side in px (default: the model's)"),
    "batch_size": (int, "batch size"),
    "lr": (float, "peak learning rate (AdamW)"),
    "weight_decay": (float, "AdamW weight decay"),
    "patience": (int, "early-stopping patience in epochs"),
    "seed": (int, "one seed for everything"),
    "split": (str, "grouped (default) | random (LEAKY, for comparison with published numbers only)"),
    "balance": (str, "class imbalance: weights | sampler | none"),
    "focal_gamma": (float, "focal-loss gamma (0 = cross-entropy)"),
    "freeze_fraction": (float, "share of backbone parameters (input side first) kept frozen"),
    "label_smoothing": (float, "label smoothing for the loss"),
    "threads": (int, "CPU threads for torch"),
    "max_minutes": (float, "stop training after this many minutes"),
    "target_sensitivity": (float, "malignant sensitivity the operating threshold aims for (held-out data)"),
    "target_normal_recall": (float, "normal recall the benign threshold keeps (held-out data)"),
    "cross_fit_folds": (int, "folds for cross-fitting the operating point (0: fit on the validation split)"),
    "case_aggregation": (str, "case rule: auto (chosen on held-out groups) | mean | max | top3 | noisy_or"),
    "n_boot": (int, "bootstrap replicates for confidence intervals"),
}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset folder (else $LUNGCT_DATA, else ./data)")
    p.add_argument("--config", help="YAML config file (unknown keys are rejected)")
    p.add_argument("--class-map", help="custom folder->class map, e.g. 'Healthy=normal,Cancer=malignant'")
    for key, (typ, text) in TRAIN_OPTIONS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, help=text)
    p.add_argument(
        "--no-augment", dest="augment", action="store_false", default=None, help="disable augmentation"
    )
    p.add_argument(
        "--no-body-crop",
        dest="body_crop",
        action="store_false",
        default=None,
        help="keep the full canvas instead of cropping to the body",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _config_from_args(args: argparse.Namespace):
    from lungct.config import load_config, make_config
    from lungct.data.discovery import parse_class_map

    overrides: dict[str, Any] = {
        k: getattr(args, k)
        for k in (*TRAIN_OPTIONS, "augment", "body_crop")
        if getattr(args, k, None) is not None
    }
    if args.data:
        overrides["data"] = args.data
    if args.class_map:
        overrides["class_map"] = parse_class_map(args.class_map)
    return load_config(args.config, overrides) if args.config else make_config(overrides)


def _add_round_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--fraction", type=float, default=1.0, help="share of sites trained per round")
    p.add_argument("--strategy", choices=("fedavg", "fedprox"), default="fedavg")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal weight")
    p.add_argument("--fedbn", action="store_true", help="each site keeps its own batch-norm layers (FedBN)")
    p.add_argument(
        "--dp-noise", type=float, default=0.0, help="central DP noise multiplier (0 = off; Flower's wrapper)"
    )
    p.add_argument("--dp-clip", type=float, default=1.0, help="L2 clipping norm of a site's update (DP)")
    p.add_argument("--round-timeout", type=float, default=3600.0, help="seconds a round waits for sites")
    p.add_argument(
        "--min-sites", type=int, default=None, help="fewest sites a round may run with (default: all)"
    )


def _add_tls_options(p: argparse.ArgumentParser, server: bool) -> None:
    p.add_argument("--ca-cert", help="PEM CA certificate (TLS)")
    if server:
        p.add_argument("--cert", help="PEM server certificate (TLS)")
        p.add_argument("--key", help="PEM server private key (TLS)")
    p.add_argument(
        "--insecure", action="store_true", help="no TLS: only for a test on one machine or a trusted network"
    )


def _add_pacs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run folder of the model")
    p.add_argument("--url", help="DICOMweb root of the PACS, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--orthanc-url", help="Orthanc REST root for rollback (default: --url without /dicom-web)")
    p.add_argument("--user", help="HTTP basic-auth user (password: $LUNGCT_PACS_PASSWORD or --password-file)")
    p.add_argument("--password-file", help="file holding the basic-auth password")
    p.add_argument("--token-file", help="file holding a bearer token (else $LUNGCT_PACS_TOKEN)")
    p.add_argument("--top", type=int, default=3, help="most suspicious slices explained and referenced")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lungct",
        description="Leakage-aware lung CT slice classification "
        "(normal / benign / malignant). Research and decision-support use only.",
    )
    ap.add_argument("--version", action="version", version=f"lungct {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("download", help="fetch IQ-OTH/NCCD with kagglehub (needs a network)")
    p.add_argument("--out", help="also link the download here (e.g. ./data)")

    p = sub.add_parser("audit", help="duplicates, scan groups, label conflicts, shortcut baseline")
    p.add_argument("--data", help="dataset folder (else $LUNGCT_DATA, else ./data)")
    p.add_argument("--out", required=True, help="output folder for manifest.csv, audit.json, audit.md")
    p.add_argument("--class-map", help="custom folder->class map, e.g. 'Healthy=normal'")
    p.add_argument("--split", choices=("grouped", "random"), help="also write a split CSV of this kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("train", help="train, calibrate, evaluate on the test split, write report.html")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from checkpoints/last.pt"
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="train with N processes (DistributedDataParallel via torchrun; gloo on CPU, nccl on GPUs)",
    )
    _add_train_options(p)

    p = sub.add_parser("cv", help="grouped k-fold cross-validation")
    p.add_argument("--out", required=True)
    p.add_argument("--folds", type=int, default=5)
    _add_train_options(p)

    p = sub.add_parser("evaluate", help="evaluate a run on any folder in the class-folder layout")
    p.add_argument("--run", required=True)
    p.add_argument("--data", help="dataset folder (else $LUNGCT_DATA, else ./data)")
    p.add_argument("--out", help="output folder (default RUN/eval/<data folder name>)")
    p.add_argument("--class-map")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("predict", help="classify images, DICOM files or folders")
    p.add_argument("--run", required=True)
    p.add_argument("--image", nargs="+", required=True, help="files or folders")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("explain", help="Grad-CAM overlays, gallery, faithfulness and shortcut checks")
    p.add_argument("--run", required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--image", nargs="+", help="files or folders to explain")
    g.add_argument("--data", help="dataset folder: explain the run's test split of it")
    p.add_argument("--out", help="output folder (default RUN/eval/test/explain)")
    p.add_argument("--method", nargs="+", default=["gradcam", "gradcam++", "eigencam"])
    p.add_argument("--target", help="class to explain (default: the predicted class)")
    p.add_argument("--max-images", type=int, default=48)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("serve", help="local web workstation and REST API")
    p.add_argument("--run", required=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1, local only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /api/*")
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        help="Host header name to serve besides the loopback names (repeatable; '*' disables the check)",
    )
    p.add_argument(
        "--cors-origin", action="append", default=None, help="origin allowed to call the API (repeatable)"
    )
    p.add_argument("--max-concurrent", type=int, default=8, help="requests worked on at once")
    p.add_argument(
        "--feedback-log",
        metavar="PATH",
        help="JSON-lines file for reader agree/disagree on the page (no identifiers; default: off)",
    )
    p.add_argument("--pacs", metavar="URL", help="DICOMweb root of a PACS the page can list and analyse")
    p.add_argument("--pacs-user", help="PACS basic-auth user (password: $LUNGCT_PACS_PASSWORD)")
    p.add_argument("--pacs-token-file", help="file holding a PACS bearer token (else $LUNGCT_PACS_TOKEN)")

    p = sub.add_parser("federated", help="federated training across sites (Flower)")
    fed = p.add_subparsers(dest="fed_command", required=True)
    p = fed.add_parser(
        "simulate", help="simulate non-IID hospitals on one machine (Flower simulation engine)"
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the site case mix")
    _add_round_options(p)
    _add_train_options(p)
    p = fed.add_parser(
        "server",
        help="coordinate a real federation: a Flower SuperLink plus this run (needs --data: held-out groups)",
    )
    p.add_argument("--out", required=True, help="run folder (written when the run ends)")
    p.add_argument("--sites", type=int, required=True, help="sites expected to connect")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=9092)
    _add_tls_options(p, server=True)
    _add_round_options(p)
    _add_train_options(p)
    p = fed.add_parser("client", help="one site: a Flower SuperNode that trains on --data and sends weights")
    p.add_argument("--data", required=True, help="this site's class-folder dataset (never leaves the site)")
    p.add_argument("--superlink", default="127.0.0.1:9092", help="the coordinator's HOST:PORT")
    p.add_argument("--site", type=int, default=0, help="this site's number in the coordinator's records")
    p.add_argument(
        "--runtime-port", type=int, default=None, help="local port of the SuperNode's app API (default 9094)"
    )
    _add_tls_options(p, server=False)

    p = sub.add_parser(
        "pacs", help="analyse a CT study on a DICOMweb PACS and store the result back (SR + Grad-CAM)"
    )
    _add_pacs_options(p)
    p.add_argument("--study", help="Study Instance UID to analyse")
    p.add_argument("--series", help="CT Series Instance UID (default: the study's largest CT series)")
    p.add_argument("--dry-run", metavar="DIR", help="write the DICOM outputs to DIR instead of storing them")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    pacs_sub = p.add_subparsers(dest="pacs_command")
    p = pacs_sub.add_parser("watch", help="analyse every new CT study once (state kept across restarts)")
    _add_pacs_options(p)
    p.add_argument("--poll", type=float, default=30.0, help="seconds between polls (default 30)")
    p.add_argument("--state", default="lungct-pacs-state.json", help="state file (written atomically)")
    p.add_argument("--once", action="store_true", help="one poll, no waiting for stable studies, then exit")

    sub.add_parser("models", help="list the model registry")

    p = sub.add_parser("run", help="the main job end to end: audit, train, evaluate, explain, report")
    p.add_argument("--out", default="runs/main", help="run folder (default runs/main)")
    p.add_argument(
        "--no-synthetic",
        action="store_true",
        help="fail when no real data is found instead of running on labelled synthetic phantoms",
    )
    _add_train_options(p)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(COMMANDS[args.command](args) or 0)
    except LungctError as exc:
        print(f"lungct: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lungct: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


def cmd_download(args) -> int:
    from lungct.data.discovery import download

    print(download(Path(args.out) if args.out else None))
    return 0


def cmd_audit(args) -> int:
    from lungct.data.audit import run_audit
    from lungct.data.discovery import parse_class_map, resolve_data_dir

    root = resolve_data_dir(args.data)
    cmap = parse_class_map(args.class_map) if args.class_map else None
    res = run_audit(root, class_map=cmap, out_dir=Path(args.out), progress=not args.quiet)
    if args.split:
        from lungct.data.splits import grouped_split, leakage_report, random_split, write_split

        assignment = (grouped_split if args.split == "grouped" else random_split)(res.rows, seed=args.seed)
        write_split(Path(args.out) / f"split_{args.split}.csv", res.rows, assignment)
        print(json.dumps({"split": args.split, "leakage": leakage_report(res.rows, assignment)}, indent=2))
    print(f"audit of {len(res.rows)} images ({len(res.skipped)} skipped) written to {args.out}/audit.md")
    return 0


def cmd_train(args) -> int:
    from lungct.model import distributed
    from lungct.pipeline.training import run_training

    if args.nproc and args.nproc > 1 and not distributed.launched_by_torchrun():
        return _relaunch_with_torchrun(args.nproc)
    if distributed.init_from_env():
        return _train_distributed(args)
    saved = Path(args.out) / "config.yaml"
    if args.resume and not args.config and saved.is_file():
        args.config = str(saved)  # resume with the run's own settings; options given now still win
    cfg = _config_from_args(args)
    paths = run_training(cfg, args.out, resume=args.resume, progress=not args.quiet)
    _print_summary(paths.root)
    return 0


def _relaunch_with_torchrun(nproc: int) -> int:
    """``lungct train --nproc N ...`` = ``torchrun --standalone --nproc-per-node N -m lungct train ...``."""
    import subprocess

    argv = sys.argv[1:]
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*cmd, "-m", "lungct", *rest])


def _train_distributed(args) -> int:
    """One process of a torchrun job: rank 0 writes the run folder, the others a temporary one."""
    import os
    import tempfile

    from lungct.errors import ConfigError
    from lungct.model import distributed
    from lungct.pipeline.training import run_training

    if args.resume:
        raise ConfigError("--resume is not supported with several processes; resume with one process")
    cfg = _config_from_args(args)
    if cfg.threads is None:  # share the cores between the processes
        cfg = replace(cfg, threads=max(1, (os.cpu_count() or 1) // distributed.world_size()))
    try:
        if distributed.rank() == 0:
            paths = run_training(cfg, args.out, resume=args.resume, progress=not args.quiet)
            _print_summary(paths.root)
        else:
            with tempfile.TemporaryDirectory(prefix="lungct-rank") as tmp:
                run_training(cfg, Path(tmp) / "run", progress=False)
    finally:
        distributed.shutdown()
    return 0


def cmd_cv(args) -> int:
    from lungct.evaluation.cv import cv_markdown
    from lungct.pipeline.crossval import run_cv

    cfg = _config_from_args(args)
    print(cv_markdown(run_cv(cfg, args.out, folds=args.folds, progress=not args.quiet)))
    return 0


def cmd_evaluate(args) -> int:
    from lungct.data.discovery import parse_class_map, resolve_data_dir
    from lungct.evaluation.evaluate import evaluate_folder
    from lungct.model.predictor import Predictor
    from lungct.pipeline.training import write_run_report
    from lungct.runs import find_run

    paths = find_run(args.run)
    predictor = Predictor.from_run(paths.root)
    root = resolve_data_dir(args.data)
    out = Path(args.out) if args.out else paths.eval_dir(root.name or "external")
    cmap = parse_class_map(args.class_map) if args.class_map else None
    m = evaluate_folder(
        predictor, root, out, run_root=paths.root, class_map=cmap, n_boot=args.n_boot, progress=not args.quiet
    )
    if out.resolve().is_relative_to(paths.root.resolve()):
        write_run_report(paths)
    print(_headline(m))
    print(f"metrics written to {out}/metrics.json")
    return 0


def _expand(items: list[str]) -> list[Path]:
    from lungct.data.imaging import IMAGE_SUFFIXES
    from lungct.errors import ImageReadError

    out: list[Path] = []
    for s in items:
        p = Path(s)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise ImageReadError(f"no such file or folder: {p}")
    if not out:
        raise ImageReadError("no image files found in the given paths")
    return out


def cmd_predict(args) -> int:
    from lungct.model.predictor import Predictor

    predictor = Predictor.from_run(args.run)
    preds = predictor.predict_paths(_expand(args.image))
    refused = sum(not p.assessed for p in preds)
    if args.json:
        doc = {
            "model": predictor.model_name,
            "version": predictor.version,
            "predictions": [p.to_dict() for p in preds],
            "not_assessed": refused,
        }
        print(json.dumps(doc, indent=2, allow_nan=False))
        return 1 if refused else 0
    for p in preds:
        if not p.assessed:
            print(f"{p.source}: NOT ASSESSED: {p.guard.reason if p.guard else 'input guard'}")
            continue
        probs = "  ".join(f"{k} {v:.3f}" for k, v in p.to_dict()["probabilities"].items())
        print(
            f"{p.source}: {p.decision.upper()} (argmax {p.class_name}; {probs}; "
            f"malignant threshold {p.threshold:.3f}, benign threshold {p.rule.benign_threshold:.3f})"
        )
    if refused:
        print(
            f"lungct: {refused} of {len(preds)} input(s) not assessed (not axial chest CT slices)",
            file=sys.stderr,
        )
    return 1 if refused else 0


def cmd_explain(args) -> int:
    from lungct.pipeline.main_job import explain_and_report

    res = explain_and_report(
        args.run,
        Path(args.out) if args.out else None,
        images=_expand(args.image) if args.image else None,
        data=Path(args.data) if args.data else None,
        methods=tuple(args.method),
        target=args.target,
        max_images=args.max_images,
        progress=not args.quiet,
    )
    print(json.dumps(res, indent=2, default=str)[:4000])
    return 0


def cmd_serve(args) -> int:
    from lungct.serve import serve

    pacs_auth = None
    if args.pacs:
        from lungct.pacs.client import PacsAuth

        pacs_auth = PacsAuth.from_options(args.pacs_user, None, args.pacs_token_file)
    serve(
        args.run,
        host=args.host,
        port=args.port,
        token=args.token,
        max_upload_mb=args.max_upload_mb,
        cors_origins=args.cors_origin,
        allowed_hosts=args.allowed_host,
        max_concurrent=args.max_concurrent,
        feedback_log=args.feedback_log,
        pacs_url=args.pacs,
        pacs_auth=pacs_auth,
    )
    return 0


PACS_HINT = "the PACS round trip needs the optional extra: pip install 'lungct[pacs]'"


def cmd_pacs(args) -> int:
    """``lungct pacs --study UID`` (one study) or ``lungct pacs watch`` (every new CT study)."""
    from lungct.errors import LungctError

    if not args.run or not args.url:
        raise LungctError("lungct pacs needs --run RUN and --url DICOMWEB_URL")
    try:
        from lungct.pacs.client import PacsAuth, PacsClient
        from lungct.pacs.roundtrip import round_trip
        from lungct.pacs.watch import Watcher
    except ImportError as exc:
        return _missing_extra(exc, ("highdicom", "dicomweb_client"), PACS_HINT)
    from lungct.model.predictor import Predictor

    auth = PacsAuth.from_options(args.user, args.password_file, args.token_file)
    client = PacsClient(args.url, auth, rest_url=args.orthanc_url)
    predictor = Predictor.from_run(args.run)
    if args.pacs_command == "watch":
        watcher = Watcher(client, predictor, args.state, top_k=args.top, settle=not args.once)
        if args.once:
            done = watcher.poll_once()
            print(f"analysed {len(done)} new CT stud{'y' if len(done) == 1 else 'ies'}; state: {args.state}")
            return 0
        try:
            watcher.run(args.poll)
        except KeyboardInterrupt:
            print(f"lungct: watch stopped; it resumes from {args.state}", file=sys.stderr)
            return 130
        return 0
    if not args.study:
        raise LungctError("lungct pacs needs --study STUDY_UID (or the subcommand 'watch')")
    res = round_trip(
        client, predictor, args.study, series_uid=args.series, dry_run=args.dry_run, top_k=args.top
    )
    if args.json:
        print(json.dumps(res, indent=2, allow_nan=False))
        return 0
    probs = "  ".join(f"{k} {v:.3f}" for k, v in res["probabilities"].items())
    print(
        f"{res['decision'].upper()} ({probs}; malignant threshold {res['threshold']:.3f}; "
        f"{res['n_assessed']} of {res['n_slices']} slices assessed; {res['timing_s']['total']:.1f} s)"
    )
    for t in res["top_slices"]:
        print(f"  slice {t['index']}: p(malignant) {t['malignant_probability']:.3f} -> {t['decision']}")
    if res["stored"]:
        print(f"stored into the study: SR series {res['stored']['sr_series_uid']}")
        print(f"                       Grad-CAM series {res['stored']['sc_series_uid']}")
    else:
        print("dry run: " + ", ".join(res["files"]))
    return 0


def _missing_extra(exc: ImportError, packages: tuple[str, ...], hint: str) -> int:
    """Exit status 2 with a one-line install hint when an optional extra is missing; else re-raise."""
    if exc.name and exc.name.split(".")[0] in packages:
        print(f"lungct: error: {hint}", file=sys.stderr)
        return 2
    raise exc


FEDERATED_HINT = "federated training needs the optional extra: pip install 'lungct[federated]'"


def cmd_federated(args) -> int:
    try:
        from lungct.federated.coordinator import RoundPlan
        from lungct.federated.deploy import Tls, run_client, run_server
        from lungct.federated.simulate import simulate
    except ImportError as exc:
        return _missing_extra(exc, ("flwr", "ray"), FEDERATED_HINT)
    tls = None
    if args.ca_cert:
        cert, key = (getattr(args, k, None) for k in ("cert", "key"))
        tls = Tls(Path(args.ca_cert), Path(cert) if cert else None, Path(key) if key else None)
    if args.fed_command == "client":
        return run_client(
            args.superlink,
            args.data,
            args.site,
            tls=tls,
            insecure=args.insecure,
            runtime_port=args.runtime_port,
        )
    plan = RoundPlan(
        sites=args.sites,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        fraction=args.fraction,
        strategy=args.strategy,
        proximal_mu=args.mu,
        fedbn=args.fedbn,
        dp_noise=args.dp_noise,
        dp_clip=args.dp_clip,
        round_timeout_s=args.round_timeout,
        min_sites=args.min_sites,
    )
    cfg = _config_from_args(args)
    if args.fed_command == "simulate":
        simulate(cfg, args.out, plan, alpha=args.alpha, progress=not args.quiet)
    else:
        if not args.data and not os.environ.get("LUNGCT_DATA"):
            print("lungct: error: the server needs --data: its own labelled held-out folder", file=sys.stderr)
            return 2
        run_server(cfg, args.out, plan, host=args.host, port=args.port, tls=tls, insecure=args.insecure)
    _print_summary(Path(args.out))
    return 0


def cmd_models(args) -> int:
    from lungct.model.registry import REGISTRY

    for name, spec in REGISTRY.items():
        weights = spec.imagenet_source or "none"
        print(f"{name:20s} {spec.input_size:4d}px  ImageNet: {weights:40s} {spec.licence}")
    return 0


def cmd_run(args) -> int:
    from lungct.pipeline.main_job import run_main_job

    cfg = _config_from_args(args)
    root = run_main_job(cfg, Path(args.out), allow_synthetic=not args.no_synthetic, progress=not args.quiet)
    _print_summary(root)
    return 0


def _headline(m: dict) -> str:
    """One line of the shipped decision's numbers (slices and cases), then the arg-max AUC."""

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    d = m.get("decision", {})
    s, c = d.get("slice", {}), d.get("case", {})
    rec = {c: v.get("recall") for c, v in s.get("per_class", {}).items()}
    overlap = m.get("overlap", {})
    leak = ""
    if overlap.get("leaky"):
        n, of = overlap["images_with_match"], overlap["n_evaluated"]
        leak = f" | LEAKY: {n} of {of} images overlap the run's training data"
    return (
        f"shipped decision, n={s.get('n')} slices: accuracy {f(s.get('accuracy'))} "
        f"balanced {f(s.get('balanced_accuracy'))} | recall normal {f(rec.get('normal'))} "
        f"benign {f(rec.get('benign'))} malignant {f(rec.get('malignant'))} "
        f"| malignant sens {f(s.get('malignant', {}).get('sensitivity'))} "
        f"spec {f(s.get('malignant', {}).get('specificity'))} | cases (n={c.get('n')}): accuracy "
        f"{f(c.get('accuracy'))} abnormal sens {f(c.get('abnormal', {}).get('sensitivity'))} "
        f"spec {f(c.get('abnormal', {}).get('specificity'))} | macro-AUC {f(m.get('macro_auc'))}{leak}"
    )


def _print_summary(run_dir: Path) -> None:
    from lungct.runs import RunPaths, read_json

    paths = RunPaths(Path(run_dir))
    metrics = paths.eval_dir("test") / "metrics.json"
    if metrics.is_file():
        print("test split: " + _headline(read_json(metrics)))
    print(f"run folder: {paths.root}  report: {paths.report}")


COMMANDS = {
    "download": cmd_download,
    "audit": cmd_audit,
    "train": cmd_train,
    "cv": cmd_cv,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "explain": cmd_explain,
    "serve": cmd_serve,
    "federated": cmd_federated,
    "pacs": cmd_pacs,
    "models": cmd_models,
    "run": cmd_run,
}

if __name__ == "__main__":
    sys.exit(main())

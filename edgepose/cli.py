"""Command line: argument parsing, logging setup and exit codes. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from edgepose import __version__
from edgepose.config import Config, SourceKind, default_config_path, load_config
from edgepose.errors import EXIT_OK, EXIT_SOFTWARE, EXIT_USAGE, ConfigError, EdgeposeError

if TYPE_CHECKING:
    from edgepose.models import Manifest

log = logging.getLogger("edgepose")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgepose", description="Pose estimation daemon: camera -> MoveNet -> MQTT")
    parser.add_argument("--version", action="version", version=f"edgepose {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument(
        "-c",
        "--config",
        type=Path,
        help="YAML config (default: /etc/edgepose/edgepose.yaml, else config/edgepose.yaml)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config key, e.g. --set mqtt.port=1884 (repeatable)",
    )
    run.add_argument("--max-frames", type=int, metavar="N", help="stop cleanly after N inferred frames")

    infer = commands.add_parser("infer", help="estimate the pose in still images")
    infer.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    infer.add_argument("--model", help="manifest name or .tflite path (default: the config's model.name)")
    infer.add_argument("-c", "--config", type=Path, help="YAML config for model settings")
    infer.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    infer.add_argument("--json", action="store_true", help="one JSON object per line")
    infer.add_argument(
        "--annotate",
        type=Path,
        metavar="OUT",
        help="also write each image with its skeleton drawn: into directory OUT, or to file OUT for one image",
    )

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file", nargs="?", type=Path)
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")

    bench = commands.add_parser("bench", help="measure raw invoke speed against the whole pipeline")
    bench.add_argument("--model", default="movenet_lightning_int8", help="manifest name or .tflite path")
    bench.add_argument(
        "--runtime",
        action="append",
        choices=["auto", "litert", "tflite"],
        dest="runtimes",
        help="repeatable (default: auto)",
    )
    bench.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="thread counts to try (default: the machine's core count)",
    )
    bench.add_argument("--frames", type=int, default=2000, help="frames per pipeline run (default 2000)")
    bench.add_argument("--source", default="synthetic", help="synthetic (default) or file:PATH")
    bench.add_argument("--paced-fps", type=float, default=30.0, help="also run a source paced at this rate (0: skip)")
    bench.add_argument("--mqtt", metavar="HOST:PORT", help="broker to use (default: a private mosquitto)")
    bench.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")

    models = commands.add_parser("models", help="list and fetch models")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    model_commands.add_parser("list", help="models in the manifest and whether they are fetched")
    fetch = model_commands.add_parser("fetch", help="download (or copy from a mirror) and verify models")
    fetch.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="model or sample names, 'samples' or 'all' (default: the configured model)",
    )
    fetch.add_argument(
        "--mirror",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="copy from this directory of upstream files instead of downloading "
        "(repeatable; default $EDGEPOSE_MODEL_MIRROR, colon-separated)",
    )
    fetch.add_argument("--dir", type=Path, help="destination (default: see README, Models)")
    fetch.add_argument("-c", "--config", type=Path, help="fetch what this config needs")
    return parser


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "infer":
            return _cmd_infer(args)
        if args.command == "config":
            return _cmd_config_check(args)
        if args.command == "models":
            return _cmd_models(args)
        if args.command == "bench":
            return _cmd_bench(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"edgepose: config error: {problem}", file=sys.stderr)
        return exc.exit_code
    except EdgeposeError as exc:
        print(f"edgepose: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader went away (`edgepose infer ... | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit-time flush quiet
        return EXIT_OK
    except Exception:  # a bug: the traceback goes to the log, the user gets one line
        log.exception("internal error")
        print("edgepose: internal error (see the log above); please report it", file=sys.stderr)
        return EXIT_SOFTWARE
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


def _load(config_path: Path | None, overrides: Sequence[str]) -> tuple[Config, Path | None]:
    path = config_path if config_path is not None else default_config_path()
    if config_path is None and not path.exists():
        return load_config(None, overrides)
    return load_config(path, overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from edgepose.daemon import Daemon
    from edgepose.systemd import Notifier, journal_handler, under_journald

    config, path = _load(args.config, args.overrides)
    if under_journald():
        # Under systemd: journald only (with priority and fields), never journald and stderr both.
        logging.getLogger().handlers[:] = [journal_handler(config.device_id)]
    logging.getLogger().setLevel(config.logging.level)
    log.info("config: %s", path if path is not None else "built-in defaults")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError([f"--max-frames {args.max_frames}: must be at least 1"])

    def reload_config() -> Config:
        reloaded, _ = _load(path, args.overrides) if path is not None else load_config(None, args.overrides)
        return reloaded

    daemon = Daemon(config, max_frames=args.max_frames, reload_config=reload_config, notifier=Notifier())

    # Handlers only set flags: the supervisor thread does the work, outside signal context.
    def on_stop(signum: int, frame: FrameType | None) -> None:
        daemon.request_stop(signal.Signals(signum).name)

    def on_reload(signum: int, frame: FrameType | None) -> None:
        daemon.request_reload()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    return daemon.run()


def _cmd_infer(args: argparse.Namespace) -> int:
    from edgepose.stills import annotation_paths, infer_images, write_annotated

    config, _ = _load(args.config, args.overrides)
    targets = annotation_paths(args.annotate, args.images) if args.annotate is not None else None
    for index, result in enumerate(infer_images(config, args.images, args.model)):
        annotated = None
        if targets is not None:
            annotated = targets[index]
            write_annotated(result, annotated, config.model.score_threshold)
        if args.json:
            line = result.as_json() | ({"annotated": str(annotated)} if annotated is not None else {})
            print(json.dumps(line), flush=True)
        else:
            print(result.as_text() + (f"\n  annotated: {annotated}" if annotated is not None else ""), flush=True)
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgepose.bench import run

    if args.frames < 10:
        raise ConfigError([f"--frames {args.frames}: must be at least 10"])
    threads = args.threads or [os.cpu_count() or 1]
    run(args.model, args.runtimes or ["auto"], threads, args.frames, args.source, args.mqtt, args.paced_fps, args.json)
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    path = args.file if args.file is not None else default_config_path()
    load_config(path, args.overrides)
    print(f"OK {path}")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from edgepose.models import default_model_dir, fetch, load_manifest, mirror_dirs

    manifest = load_manifest()
    if args.models_command == "list":
        model_dir = default_model_dir()
        print(f"models directory: {model_dir}")
        for spec in manifest.models.values():
            present = "fetched" if (model_dir / spec.file).is_file() else "-"
            pinned = "sha256 pinned" if spec.sha256 else "sha256 recorded on first fetch"
            print(f"{spec.name:34} {spec.backend:8} {spec.input_size:4}px {spec.input_dtype:8} {present:8} {pinned}")
        for sample in manifest.samples.values():
            present = "fetched" if (model_dir / sample.file).is_file() else "-"
            print(f"{sample.name:34} {'sample':8} {'':6} {'':8} {present:8}")
        return EXIT_OK

    config = None
    if args.config is not None or not args.names:
        config, _ = _load(args.config, [])
    dest = args.dir or default_model_dir(config.model.dir if config else None)
    names: list[str] = []
    for name in args.names:
        if name == "all":
            names += [*manifest.models, *manifest.samples]
        elif name == "samples":
            names += list(manifest.samples)
        else:
            names.append(name)
    if not args.names and config is not None:
        names = _names_for_config(config, manifest)
    for result in fetch(dict.fromkeys(names), dest, manifest, mirror_dirs(args.mirror)):
        pin = "verified" if result.pinned else "recorded"
        print(f"{result.name}: {result.path} ({result.how}, sha256 {pin} {result.sha256})")
    return EXIT_OK


def _names_for_config(config: Config, manifest: Manifest) -> list[str]:
    names: list[str] = []
    if config.model.name in manifest.models:
        spec = manifest.models[config.model.name]
        names.append(spec.name)
        if config.model.backend != "cpu" and spec.edgetpu_twin:
            names.append(spec.edgetpu_twin)
        if spec.cpu_twin:
            names.append(spec.cpu_twin)
    if config.camera.source.kind == SourceKind.DEMO:
        names += list(manifest.samples)
    return names

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
from typing import TYPE_CHECKING, NoReturn

from edgepose import __version__
from edgepose.config import Config, default_config_path, load_config
from edgepose.errors import EXIT_OK, EXIT_SOFTWARE, EXIT_USAGE, ConfigError, EdgeposeError, OutputError, UsageError

if TYPE_CHECKING:
    from edgepose.models import Manifest

log = logging.getLogger("edgepose")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a bad command line; the README (and sysexits.h) say 64."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    # Subparsers inherit the class (argparse uses type(parser) for them), so all exit 64.
    parser = _Parser(prog="edgepose", description="Pose estimation daemon: camera -> MoveNet -> MQTT")
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

    evaluate = commands.add_parser(
        "eval",
        help="score a model and its settings on labelled stills, clips, a video or COCO data",
        description="Runs the daemon's own stage over labelled data and prints each keypoint's error, "
        "PCK at the upstream tolerance (21 px per 640 px) and, for COCO data, OKS AP.",
    )
    evaluate.add_argument("images", nargs="*", type=Path, metavar="IMAGE", help="stills labelled by --truth, in order")
    evaluate.add_argument(
        "--truth", type=Path, metavar="CSV", help="TF truth CSV: one row per image, or per video frame"
    )
    evaluate.add_argument(
        "--clips",
        choices=["none", "quick", "full"],
        default="none",
        help="also build moving clips from the labelled stills and score them in video mode",
    )
    evaluate.add_argument(
        "--compare", action="store_true", help="clips also with the stills path, smart crop off, smoothing off"
    )
    evaluate.add_argument("--video", type=Path, help="a video file or a directory of frames, labelled by --truth")
    evaluate.add_argument("--fps", type=float, default=30.0, help="frame rate of --video (default 30)")
    evaluate.add_argument(
        "--reference-px", type=float, help="video: size the tolerance scales with (default: frame height)"
    )
    evaluate.add_argument("--coco", type=Path, metavar="JSON", help="COCO person-keypoints annotations")
    evaluate.add_argument("--coco-images", type=Path, metavar="DIR", help="where the COCO file's images are")
    evaluate.add_argument(
        "--order",
        choices=["pipelined", "serial"],
        default="pipelined",
        help="video: pipelined = the daemon with a source faster than the model (default); "
        "serial = a camera slower than the model",
    )
    evaluate.add_argument("--model", help="manifest name or .tflite path (default: the config's model.name)")
    evaluate.add_argument("-c", "--config", type=Path, help="YAML config for model settings")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    evaluate.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    evaluate.add_argument(
        "--markdown", action="store_true", help="only the summary table, one row per set, one column per variant"
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
    bench.add_argument("--conditions", default="", metavar="TEXT", help="what else loaded the machine (in the JSON)")

    watch = commands.add_parser("watch", help="live view of a fleet's keypoints streams (an MQTT consumer)")
    watch.add_argument("--mqtt", required=True, metavar="HOST:PORT", help="the broker")
    watch.add_argument("--device", metavar="ID", help="only this device (default: every device, +)")
    watch.add_argument("--share", metavar="GROUP", help="join shared-subscription group GROUP for keypoints")
    watch.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    watch.add_argument("--json", type=Path, metavar="OUT", help="write the final report as JSON")
    watch.add_argument("--record", type=Path, metavar="FILE.jsonl", help="write every message received, one per line")
    watch.add_argument("--base-topic", default="edgepose", help="topic prefix (default: edgepose)")
    watch.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version (default: 5)")
    watch.add_argument("--no-validate", action="store_true", help="skip JSON Schema validation of keypoints")

    sim = commands.add_parser("fleet-sim", help="simulate N devices publishing replayed poses over MQTT")
    sim.add_argument("--devices", type=int, required=True, metavar="N")
    sim.add_argument("--fps", type=float, required=True, metavar="F", help="keypoints messages per second per device")
    sim.add_argument("--duration", type=float, required=True, metavar="S", help="seconds of publishing")
    sim.add_argument(
        "--mqtt", required=True, metavar="HOST:PORT[,HOST:PORT...]", help="broker(s); devices spread round-robin"
    )
    sim.add_argument("--format", choices=["json", "compact"], default="json", help="keypoints payload (default json)")
    sim.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    sim.add_argument("--base-topic", default="edgepose", help="topic prefix (default: edgepose)")
    sim.add_argument("--id-prefix", default="sim", help="device ids are PREFIX-0000, PREFIX-0001, ...")
    sim.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version (default: 5)")
    sim.add_argument("--qos", type=int, choices=[0, 1], default=0, help="keypoints QoS (default 0, as the daemon)")
    sim.add_argument(
        "--keypoints-expiry",
        type=int,
        default=0,
        metavar="S",
        help="MQTT 5 message expiry on keypoints, seconds (default 0: none)",
    )
    sim.add_argument("--health-interval", type=float, default=10.0, metavar="S", help="retained health period")
    sim.add_argument("--processes", type=int, default=0, metavar="P", help="event-loop processes (default: auto)")
    sim.add_argument("--loss-percent", type=float, default=0.0, metavar="P", help="drop P%% of keypoints (seq gaps)")
    sim.add_argument("--seed", type=int, default=0, help="seed for --loss-percent")

    doctor = commands.add_parser("doctor", help="check this machine: camera, runtime, Coral, models, broker, power")
    doctor.add_argument("-c", "--config", type=Path, help="YAML config (default: as `run`)")
    doctor.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    doctor.add_argument("--json", action="store_true", help='print {"checks": [{"name", "status", "detail", "fix"}]}')
    # Read /proc, /sys, /dev and /etc under this directory instead of / (tests, and a Pi's SD card).
    doctor.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)

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
        if args.command == "eval":
            return _cmd_eval(args)
        if args.command == "config":
            return _cmd_config_check(args)
        if args.command == "models":
            return _cmd_models(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "watch":
            return _cmd_watch(args)
        if args.command == "fleet-sim":
            return _cmd_fleet_sim(args)
        if args.command == "doctor":
            return _cmd_doctor(args)
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
    # SIGTERM can come at any moment. Until the daemon exists nothing needs closing: leave at once
    # (the heavy imports alone can take seconds on a loaded Pi). From then on the daemon's flag.
    def on_early_stop(signum: int, frame: FrameType | None) -> None:
        raise _StoppedBeforeStart(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_early_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.getsignal(signal.SIGHUP)
    try:
        return _start_daemon(args)
    except _StoppedBeforeStart as stop:
        log.info("stopping: %s before the daemon started", stop)
        return EXIT_OK
    finally:
        # Whatever happened, nothing of this run's handlers outlives it (main() may be called in-process).
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _StoppedBeforeStart(BaseException):
    """Raised by the early SIGTERM handler; BaseException so no `except Exception` on the way swallows it."""


def _start_daemon(args: argparse.Namespace) -> int:
    from edgepose.daemon import Daemon
    from edgepose.systemd import Notifier, journal_handler, under_journald

    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError(f"--max-frames {args.max_frames}: must be at least 1")
    config, path = _load(args.config, args.overrides)
    if under_journald():
        # Under systemd: journald only (with priority and fields), never journald and stderr both.
        logging.getLogger().handlers[:] = [journal_handler(config.device_id)]
    logging.getLogger().setLevel(config.logging.level)
    log.info("config: %s", path if path is not None else "built-in defaults")

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


def _cmd_eval(args: argparse.Namespace) -> int:
    from edgepose.evaluation.evaluate import EvalRequest, evaluate

    config, _ = _load(args.config, args.overrides)
    request = EvalRequest(
        truth_csv=args.truth,
        images=tuple(args.images),
        clips=args.clips,
        video=args.video,
        video_fps=args.fps,
        reference_px=args.reference_px,
        coco=args.coco,
        coco_images=args.coco_images,
        pipelined=args.order == "pipelined",
        compare=args.compare,
    )

    def with_overrides(extra: list[str]) -> Config:
        return _load(args.config, [*args.overrides, *extra])[0]

    report = evaluate(config, request, args.model, with_overrides)
    if args.json:
        print(json.dumps(report.as_json(), indent=2), flush=True)
    else:
        print(report.as_markdown() if args.markdown else report.as_text(), flush=True)
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgepose.bench import run

    if args.frames < 10:
        raise UsageError(f"--frames {args.frames}: must be at least 10")
    threads = args.threads or [os.cpu_count() or 1]
    run(
        args.model,
        args.runtimes or ["auto"],
        threads,
        args.frames,
        args.source,
        args.mqtt,
        args.paced_fps,
        args.json,
        args.conditions,
    )
    return EXIT_OK


def _broker_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--mqtt {text}: expected HOST:PORT, e.g. --mqtt localhost:1883")
    return host, int(port)


def _cmd_watch(args: argparse.Namespace) -> int:
    import threading

    from edgepose.client import Subscription
    from edgepose.fleet.watch import WatchOptions, run_watch

    host, port = _broker_address(args.mqtt)
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration {args.duration}: must be positive")
    try:
        subscription = Subscription(args.base_topic, args.device, args.share)
    except ValueError as exc:
        raise UsageError(f"--device/--share: {exc}") from None
    options = WatchOptions(
        host,
        port,
        subscription,
        duration_s=args.duration,
        json_out=args.json,
        record=args.record,
        protocol=args.protocol,
        validate=not args.no_validate,
    )
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    run_watch(options, stop, sys.stdout)
    return EXIT_OK


def _cmd_fleet_sim(args: argparse.Namespace) -> int:
    from edgepose.fleet.sim import SimConfig, parse_brokers, run_fleet
    from edgepose.mqtt.payloads import PayloadFormat

    try:
        brokers = parse_brokers(args.mqtt)
    except ValueError as exc:
        raise UsageError(f"--mqtt {args.mqtt}: {exc}; expected HOST:PORT[,HOST:PORT...]") from None
    for name, value in (("--devices", args.devices), ("--fps", args.fps), ("--duration", args.duration)):
        if value <= 0:
            raise UsageError(f"{name} {value}: must be positive")
    if args.keypoints_expiry < 0 or (args.keypoints_expiry and args.protocol != "5"):
        raise UsageError(f"--keypoints-expiry {args.keypoints_expiry}: needs --protocol 5 and a value >= 0")
    if not 0 <= args.loss_percent < 100:
        raise UsageError(f"--loss-percent {args.loss_percent}: must be in 0..100")
    config = SimConfig(
        devices=args.devices,
        fps=args.fps,
        duration_s=args.duration,
        brokers=brokers,
        payload_format=PayloadFormat(args.format),
        base_topic=args.base_topic,
        id_prefix=args.id_prefix,
        protocol=args.protocol,
        qos_keypoints=args.qos,
        keypoints_expiry_s=args.keypoints_expiry,
        health_interval_s=args.health_interval,
        processes=args.processes,
        loss_percent=args.loss_percent,
        seed=args.seed,
    )
    report = run_fleet(config)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json is not None:
        try:
            args.json.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"--json {args.json}: cannot write: {exc.strerror or exc}") from None
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from edgepose.doctor import Host, default_path_for_doctor, exit_code, render, run_checks

    logging.getLogger().setLevel(logging.ERROR)  # the report is the output; library chatter is not
    checks = run_checks(default_path_for_doctor(args.config), args.overrides, Host(root=args.root))
    if args.json:
        print(json.dumps({"checks": [check.as_json() for check in checks]}, indent=2))
    else:
        print(render(checks))
    return exit_code(checks)


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
    if config.camera.source.uses_sample_photos:
        names += list(manifest.samples)
    return names

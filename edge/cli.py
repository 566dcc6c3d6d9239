"""`facegate` command line (contract: DESIGN.md section 4).

Each sub-command is implemented by `edge.commands.<name>.run(args, cfg) -> int`, imported only
when that command runs, so `facegate --help` stays fast and a command whose module has not
landed says so instead of faking output. Exit codes: 0 success, 1 denied/failed/below target,
2 usage or input error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from edge import __version__
from edge.errors import ConfigError, FacegateError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: usage error: {message}\n")



def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite amount >= 0")
    return value


def _common() -> _Parser:
    p = _Parser(add_help=False)
    # SUPPRESS: a sub-command's absent option must not clobber one given before the command.
    p.add_argument("--config", metavar="F", default=argparse.SUPPRESS,
                   help="TOML config (default: $FACEGATE_CONFIG)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="facegate", description="Edge face-verification kiosk firmware.")
    parser.add_argument("--version", action="version", version=f"facegate {__version__}")
    parser.add_argument("--config", metavar="F", help="TOML config (default: $FACEGATE_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("run", parents=[common], help="run the kiosk loop")
    p.add_argument("--source", metavar="URI", help="camera source URI (overrides config)")
    p.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after N frames")
    p.add_argument("--claim", metavar="'SUBJECT [AMOUNT] [REF]'",
                   help="use this claim for every session")
    p.add_argument("--claims-from", metavar="PATH",
                   help="read claim lines 'SUBJECT [AMOUNT] [REF]' from a file/FIFO ('-': stdin)")
    p.set_defaults(handler="run")
    p = sub.add_parser("demo", parents=[common],
                       help="enrol, verify, reject an attack on the clip shipped with facegate")
    p.add_argument("--keep", action="store_true", help="keep the demo's state directory")
    p.add_argument("--no-display", action="store_true", help="do not serve the prompt page")
    p.set_defaults(handler="demo")

    p = sub.add_parser("enroll", parents=[common], help="enrol a subject on this device")
    p.add_argument("subject")
    p.add_argument("--source", metavar="URI", required=True)
    p.add_argument("--frames", type=int, metavar="N", help="good frames to average")
    p.set_defaults(handler="enroll")

    p = sub.add_parser("verify", parents=[common], help="run one verification session")
    p.add_argument("subject")
    p.add_argument("--source", metavar="URI", required=True)
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--amount", type=_amount, help="payment amount (step-up policy)")
    p.add_argument("--seed", type=int, help="seed for the challenge timing (tests)")
    p.set_defaults(handler="verify")

    p = sub.add_parser("templates", parents=[common], help="manage the template store")
    tsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    tsub.required = True
    tsub.add_parser("list", parents=[common])
    t = tsub.add_parser("import", parents=[common])
    t.add_argument("file")
    t = tsub.add_parser("revoke", parents=[common])
    t.add_argument("subject")
    tsub.add_parser("check", parents=[common], help="integrity check, changes nothing")
    t = tsub.add_parser("wipe", parents=[common])
    t.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler="templates")

    p = sub.add_parser("keys", parents=[common], help="device identity keys")
    ksub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    ksub.required = True
    ksub.add_parser("init", parents=[common])
    ksub.add_parser("public", parents=[common])
    p.set_defaults(handler="keys")

    p = sub.add_parser("eval", parents=[common], help="evaluate on a data set")
    esub = p.add_subparsers(dest="what", metavar="WHAT", parser_class=_Parser)
    esub.required = True
    e = esub.add_parser("lfw", parents=[common])
    e.add_argument("--pairs", required=True, metavar="F")
    e.add_argument("--images", required=True, metavar="DIR")
    e.add_argument("--json", metavar="OUT", dest="json_out")
    e.add_argument("--plot", metavar="PNG")
    e.add_argument("--limit", type=int, metavar="N", help="N pairs, half same, half different")
    e.add_argument("--model", metavar="F", help="evaluate another embedder .tflite (no hash check)")
    e.add_argument("--no-flip", action="store_true", help="embed without the mirrored chip")
    e.add_argument("--tta", choices=("always", "adaptive", "off"),
                   help="mirrored chip: always (default), adaptive (the kiosk's), off")
    e.add_argument(
        "--calibrate", action="store_true", help="derive thresholds from these (training) pairs"
    )
    e.set_defaults(handler="eval_lfw")
    e = esub.add_parser("liveness", parents=[common])
    e.add_argument("--data", required=True, metavar="DIR")
    e.add_argument("--challenge", choices=("always", "never"), default="always",
                   help="blink asked in every session (default) or never (the fare gate)")
    e.add_argument("--json", metavar="OUT", dest="json_out")
    e.add_argument("--plot", metavar="PNG", help="live vs attack passive scores, threshold")
    e.set_defaults(handler="eval_liveness")
    e = esub.add_parser("detect", parents=[common])
    e.add_argument("--data", required=True, metavar="DIR")
    e.add_argument("--json", metavar="OUT", dest="json_out")
    e.set_defaults(handler="eval_detect")

    p = sub.add_parser("bench", parents=[common], help="per-stage timing (JSON)")
    p.add_argument("--source", metavar="URI")
    p.add_argument("--frames", type=int, default=200, metavar="N")
    p.add_argument("--threads", type=int, default=1, metavar="N")
    p.add_argument(
        "--embed-every",
        type=int,
        metavar="N",
        help="align + embed one frame with a face in N (default: the kiosk's cadence, "
        "edge.measure.bench.EMBED_EVERY; 1 = every frame)",
    )
    p.add_argument("--json", metavar="OUT", dest="json_out")
    p.add_argument("--soak", type=float, metavar="MINUTES",
                   help="run the real kiosk loop on the looped --source (default: the demo "
                   "clip) for MINUTES and report resident memory at 1 minute and at the end")
    p.set_defaults(handler="bench")

    p = sub.add_parser("console", parents=[common], help="technician serial console")
    p.add_argument("--port", metavar="DEV")
    p.add_argument("--baud", type=int, default=None)
    p.add_argument("--hash-pin", action="store_true",
                   help="read a technician PIN on stdin and print its hash for [console] pin_hash")
    p.add_argument("--new-codes", type=int, metavar="N",
                   help="issue N single-use technician codes (printed once)")
    p.set_defaults(handler="console")

    p = sub.add_parser("outbox", parents=[common], help="inspect or drain the event outbox")
    osub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    osub.required = True
    osub.add_parser("status", parents=[common])
    o = osub.add_parser("drain", parents=[common])
    o.add_argument("--timeout", type=float, default=30.0, metavar="S")
    p.set_defaults(handler="outbox")
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `facegate` console script; returns the process exit code."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # keep driver chatter off the console
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(bool(getattr(args, "verbose", False)))
    modname = f"edge.commands.{args.handler}"
    try:
        from edge.config import load_config

        cfg = load_config(args.config)
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            print(f"facegate {args.command}: not implemented yet", file=sys.stderr)
            return EXIT_USAGE
        return int(module.run(args, cfg))
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    except FacegateError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

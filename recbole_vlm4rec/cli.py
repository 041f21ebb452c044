"""The ``vlm4rec`` command: one subcommand per pipeline stage.

Each stage module exposes ``register(subparsers)``, which adds its subcommand(s) and sets
``func`` (called with the parsed args; returns an exit code), and ``patches_recbole=True`` for a
command that builds RecBole datasets or models (``compat.install()`` runs before it; no other
command imports RecBole). Add a stage by listing its module in STAGE_MODULES. Heavy imports happen
inside the command functions, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

STAGE_MODULES = (
    "recbole_vlm4rec.data.cli",
    "recbole_vlm4rec.data.prepare.cli",
    "recbole_vlm4rec.grounding.cli",
    "recbole_vlm4rec.encoding.cli",
    "recbole_vlm4rec.models.cli",
    "recbole_vlm4rec.run.cli",
    "recbole_vlm4rec.benchmark.cli",
    "recbole_vlm4rec.serving.cli",
)

DESCRIPTION = """\
VLM4Rec pipeline. Offline stages read and write files with documented formats, so each can be
rerun on its own; `vlm4rec run` (or `python run_recbole.py` in a checkout) trains and evaluates
models on the results.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm4rec", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in STAGE_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "accepts_overrides", False):
        args.overrides = rest  # --key=value config overrides (vlm4rec run / export)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "patches_recbole", False):
        from recbole_vlm4rec import compat

        compat.install()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

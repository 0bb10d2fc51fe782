"""The command line: `python -m eqx_attr COMMAND` (also `eqx-attr`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from .._compile_cache import enable_compile_cache
from ._explain import CLIError, cmd_explain, cmd_methods
from ._parser import build_parser


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 600 else text[:597] + "..."


def _show_library_messages() -> None:
    # The library logs (never prints); the command line shows its own messages.
    log = logging.getLogger("eqx_attr")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _names(value: str | None) -> list[str] | None:
    """`"a,b"` -> `["a", "b"]`; `None` (the flag not given) stays `None`."""
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on bad input).

    Bad input (missing or unreadable files, wrong image size or channel count,
    unknown model or method, mismatched weights) prints ONE line on stderr.

    **Arguments:**

    - `argv`: the arguments (default: `sys.argv[1:]`).

    **Returns:** the exit status.

    ```python
    main(["methods"])
    ```
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    # Every command compiles: a second run of the same command loads instead.
    enable_compile_cache()
    try:
        if args.command == "demo":
            from ._demo import run_demo

            _show_library_messages()
            if args.digits < 1:
                raise CLIError("--digits must be >= 1")
            run_demo(
                args.out,
                n_digits=args.digits,
                progress=not args.no_progress,
                leaderboard=(
                    False
                    if args.no_leaderboard
                    else ("all" if args.leaderboard_all else True)
                ),
                vit=not args.no_vit,
                methods=_names(args.methods),
            )
            return 0
        if args.command == "methods":
            return cmd_methods()
        if args.command == "explain-dataset":
            from ._explain_dataset import run

            return run(args)
        return cmd_explain(args)
    except CLIError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError) as e:
        # Library errors (WeightsError is a ValueError) carry their own fix; the
        # command line shows them as one line, without a traceback.
        print(f"error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 2

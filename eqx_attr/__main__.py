"""Command line: `python -m eqx_attr demo` (the demo issue fills this in)."""

import sys


def main(argv: list[str] | None = None) -> int:
    import eqx_attr as xa

    argv = sys.argv[1:] if argv is None else argv
    names = sorted(
        n
        for n in dir(xa)
        if isinstance(getattr(xa, n), type)
        and issubclass(getattr(xa, n), xa.AbstractAttribution)
        and n != "AbstractAttribution"
    )
    print("eqx_attr methods available:", ", ".join(names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

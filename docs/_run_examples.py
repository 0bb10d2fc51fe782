"""Run the code blocks of the docs marked `<!-- exec -->` (the test suite does).

```bash
python docs/_run_examples.py                       # every page
python docs/_run_examples.py methods/gradient.md   # some pages
```

Each page runs in its own namespace, block after block, in a temporary working
folder, all pages in this one process (so JAX's caches are shared between
pages). XLA compiles with its cheap settings: the examples are tiny, so compile
time is all that matters. Prints one line per block with its time; exits with
status 1 naming the page and block of the first failure.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import tempfile
import time
import traceback

DOCS = pathlib.Path(__file__).resolve().parent
MARKED = re.compile(r"<!-- exec -->\s*\n```python\n(.*?)\n```", re.S)


def exec_blocks(page: str) -> list[str]:
    """The code of the blocks marked `<!-- exec -->` on a page, in order.

    **Arguments:** `page`, a path relative to `docs/`, e.g. `"index.md"`.

    **Returns:** a list of code strings.
    """
    return MARKED.findall((DOCS / page).read_text())


def pages_with_examples() -> list[str]:
    """Every page of `docs/` with at least one marked block.

    **Arguments:** none.

    **Returns:** paths relative to `docs/`, sorted.
    """
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    return [p for p in pages if exec_blocks(p)]


def run(pages: list[str]) -> int:
    """Run the marked blocks of `pages`; print a line per block.

    **Arguments:** `pages`, paths relative to `docs/`.

    **Returns:** 0 if every block ran, else 1 (after printing the traceback).
    """
    sys.path.insert(0, str(DOCS.parent))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.setdefault("EQX_ATTR_CACHE", os.path.join(tmp, "cache"))
        for page in pages:
            namespace: dict = {"__name__": "__docs__"}
            for i, code in enumerate(exec_blocks(page), 1):
                t = time.perf_counter()
                try:
                    exec(compile(code, f"docs/{page} (block {i})", "exec"), namespace)
                except Exception:
                    traceback.print_exc()
                    print(f"FAILED: docs/{page}, block {i}:\n{code}", flush=True)
                    return 1
                print(
                    f"ok {page} block {i}: {time.perf_counter() - t:.1f} s", flush=True
                )
            import matplotlib.pyplot as plt

            plt.close("all")
    print(f"all examples ran in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    # Before JAX is imported (by the first example).
    os.environ.setdefault(
        "XLA_FLAGS",
        "--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true",
    )
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(run(sys.argv[1:] or pages_with_examples()))

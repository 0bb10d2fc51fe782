"""Compile once per machine: JAX's persistent compilation cache in the user's
cache folder ([`enable_compile_cache`][])."""

from __future__ import annotations

import os
import pathlib

import jax

ENV = "EQX_ATTR_COMPILE_CACHE"


def enable_compile_cache(
    directory: str | os.PathLike[str] | None = None,
) -> pathlib.Path | None:
    """Keep every compiled program on disk, so a second run compiles nothing.

    Turns on JAX's persistent compilation cache (`jax_compilation_cache_dir`) for
    every program, however quick to compile: a CPU process explaining a ResNet
    spends most of its first call in XLA's compiler, and the same command run
    again then loads the programs instead. The command line, the demo and
    [`eqx_attr.explain_dataset`][] call it; a library user calls it once at the
    start of a script.

    `$EQX_ATTR_COMPILE_CACHE=0` turns it off; any other value of it is the folder
    to use when `directory` is not given. A folder the user already
    gave JAX (`jax.config.update("jax_compilation_cache_dir", ...)`) is kept.

    **Arguments:**

    - `directory`: the folder (created if missing); default
        `eqx_attr.training.cache_dir() / "xla"` (`$EQX_ATTR_CACHE/xla`).

    **Returns:** the folder in use, or `None` when turned off by the environment.

    ```python
    import eqx_attr as xa
    xa.enable_compile_cache()      # before the first call of a method
    ```
    """
    env = os.environ.get(ENV, "")
    if env == "0":
        return None
    current = jax.config.jax_compilation_cache_dir  # pyright: ignore[reportAttributeAccessIssue]
    if current:
        return pathlib.Path(current)
    if directory is None and not env:
        from .training import cache_dir  # the weights' folder; imported on use

        directory = cache_dir() / "xla"
    path = pathlib.Path(directory or env).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every program: the defaults skip those compiled in under a second,
    # and a method's call is often several of those.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path

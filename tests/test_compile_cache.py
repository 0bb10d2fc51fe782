"""`xa.enable_compile_cache`: JAX's persistent compilation cache in the user's
cache folder, so that a second run compiles nothing."""

import os
import pathlib
import subprocess
import sys

import jax

import eqx_attr as xa

_SCRIPT = """
import os, pathlib, sys
import jax, jax.numpy as jnp
import eqx_attr as xa
assert jax.config.jax_compilation_cache_dir is None
if os.environ.get("EQX_ATTR_COMPILE_CACHE") == "0":
    assert xa.enable_compile_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    sys.exit(0)
path = xa.enable_compile_cache()
assert path == pathlib.Path(sys.argv[1]), (path, sys.argv[1])
jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.ones(3)).block_until_ready()
assert any(path.iterdir()), "nothing written to the cache"
# A second call keeps the folder in use.
assert xa.enable_compile_cache("/elsewhere") == path
"""


def _run(tmp_path: pathlib.Path, **env: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
    clean = {**clean, "EQX_ATTR_CACHE": str(tmp_path), **env}
    expected = env.get("EQX_ATTR_COMPILE_CACHE") or str(tmp_path / "xla")
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, expected], env=clean, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_default_folder_is_under_the_weights_cache(tmp_path):
    _run(tmp_path)


def test_environment_names_the_folder_or_turns_it_off(tmp_path):
    _run(tmp_path, EQX_ATTR_COMPILE_CACHE=str(tmp_path / "mine"))
    _run(tmp_path, EQX_ATTR_COMPILE_CACHE="0")


def test_a_folder_already_configured_is_kept():
    # The suite configures one for the whole run (tests/conftest.py).
    configured = jax.config.jax_compilation_cache_dir
    assert configured
    assert xa.enable_compile_cache("/somewhere/else") == pathlib.Path(configured)

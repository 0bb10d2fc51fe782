import atexit
import os
import shutil
import tempfile

# Cheap compiles. The suite runs thousands of small programs once each, so XLA's
# compile time is most of its cost:
# - LLVM's optimisation passes are off (XLA:CPU compiles without fast-math, so
#   this changes the speed of the generated code, not what it computes);
# - constant folding is off: tests close over small constant images, and XLA
#   would otherwise evaluate the model's forward pass on them at compile time with
#   its (slow) reference evaluator: 4.5 s of a 5 s compile for DeepLIFT vmapped
#   over 10 targets (0.9 s without). The same arithmetic then runs at run time.
# - the classic elemental emitter instead of the fusion emitters (MLIR), whose
#   compile is 3x slower at this size (with the flags above: 1.8 s instead of
#   6.4 s of backend compile for six small gradient programs); the scheduler
#   that reorders for concurrency is off too.
# One thread per XLA program: the test runner gives each worker its core.
FAST_XLA = (
    "--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true "
    "--xla_disable_hlo_passes=constant_folding "
    "--xla_cpu_use_fusion_emitters=false "
    "--xla_cpu_enable_concurrency_optimized_scheduler=false"
)
# Flags already in XLA_FLAGS come last, so they win: `make test-isa` runs the suite
# under `--xla_cpu_max_isa=AVX2` / `SSE4_2` with the cheap compiles above.
# (xdist workers inherit the combined value and leave it as it is.)
if FAST_XLA not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{FAST_XLA} {os.environ.get('XLA_FLAGS', '')}".strip()
# One thread for the other numerical libraries too (torch, OpenBLAS, MKL): with a
# thread per core in each of the two workers, their OpenMP threads spin-wait for
# a core the other worker holds (the Zennit and Captum comparisons ran 2x slower,
# and the run spent ~180 s more CPU time). Workers and subprocesses inherit this.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent compilation cache for the whole run, shared by the xdist workers
# and every subprocess (notebook kernels, CLI runs, the runner's workers): a
# program compiled once is loaded by the next process that builds the same one.
# The controller creates it (workers inherit the variable) and removes it at exit;
# it never outlives the run, so no stale entry can hide a failure.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _xla_cache = tempfile.mkdtemp(prefix="eqx_attr_xla_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
    atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "standard")

# Fuzzing (tests/test_fuzz.py) is derandomised: the same examples on every machine
# and every run, no example database, no deadline (first calls compile). Tests set
# their own small `max_examples`. `HYPOTHESIS_PROFILE=explore` searches further;
# `noshrink` reports failures unshrunk (fast).
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=10,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore", parent=settings.get_profile("ci"), derandomize=False, max_examples=200
)
# No shrinking: a failing example is reported at once (for local debugging).
settings.register_profile(
    "noshrink",
    parent=settings.get_profile("ci"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Every compiled XLA:CPU program keeps its machine code in memory mappings of its
# own, and JAX's caches keep the programs alive. A test worker compiles thousands
# of programs in one process; past Linux's `vm.max_map_count` (65,530 here) the
# next compilation fails inside LLVM and the worker dies in XLA's compiler
# ("Fatal Python error: Segmentation fault"/"Aborted" in
# `backend_compile_and_load`, in whichever test happened to be compiling: seen
# after ~700 tests per worker). Between tests, once the process holds many
# mappings, drop JAX's in-memory caches: the next test compiles anew (or loads
# from the run's persistent cache), and the mappings are released.
_MAPS_LIMIT = 20_000


def _n_mappings() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no such limit to stay under
        return 0


def pytest_runtest_teardown(item):
    if _n_mappings() > _MAPS_LIMIT:
        import gc

        jax.clear_caches()
        gc.collect()

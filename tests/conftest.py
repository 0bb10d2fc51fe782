import os

# Keep XLA to the cores the test runner gives it, and quiet.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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

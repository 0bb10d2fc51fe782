"""Infidelity and SensitivityMax equal Captum's given identical perturbations."""

import jax
import numpy as np
import pytest
import torch
from captum.attr import Saliency
from captum.metrics import infidelity, sensitivity_max

import eqx_attr as xa
from eqx_attr.torch_twins import to_torch

from .helpers import assert_close, jcall, jmetric

M = xa.metrics


@pytest.fixture(scope="module")
def setup():
    model = xa.models.SmallCNN(width=2, key=jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8))
    return model, x, to_torch(model), torch.from_numpy(np.asarray(x))[None]


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity(setup, normalize):
    model, x, twin, tx = setup
    a = jcall(xa.Gradients(model), x, 3)
    metric = M.Infidelity(model, n_samples=6, stdev=0.1, normalize=normalize)
    key = jax.random.key(2)
    noise = torch.from_numpy(np.asarray(jmetric(metric, x, key, fn="perturbations")))

    def perturb(inputs):  # inputs: the example repeated n_samples times
        return noise, inputs - noise

    want = infidelity(
        twin, perturb, tx, torch.from_numpy(np.asarray(a))[None], target=3,
        n_perturb_samples=6, normalize=normalize,
    )  # fmt: skip
    got = jmetric(metric, x, 3, a, key=key)
    assert_close(got, want.item(), dtype=np.float32)


def test_sensitivity_max(setup):
    model, x, twin, tx = setup
    metric = M.SensitivityMax(xa.Gradients(model), radius=0.05, n_samples=5)
    key = jax.random.key(3)
    noise = torch.from_numpy(np.asarray(jmetric(metric, x, key, fn="perturbations")))

    def perturb(inputs, perturb_radius):
        return inputs + noise

    want = sensitivity_max(
        Saliency(twin).attribute, tx, perturb, n_perturb_samples=5, target=3, abs=False
    )
    assert_close(jmetric(metric, x, 3, key=key), want.item(), dtype=np.float32)

"""Latent-sharded SAEs on 2 and 4 gloo ranks against the single-process saekit SAE.

Selections (code and AuxK, ties included) must be identical; values, reconstructions and
gradients agree to float32 rounding (grid data makes every product exact, so only the order of
the cross-rank sums differs), bf16 to its own rounding of the partial reconstructions.
"""

import pytest
import torch

from tests.distributed.scenarios import (
    CASES,
    TRAIN,
    TRAIN_STEPS,
    full_sae,
    run_case,
    train_steps,
)

WORLDS = ("world2", "world4")


def _tolerance(case, ref=None):
    """float32: rounding of reordered sums. bfloat16: every rank's partial reconstruction is
    rounded to bf16 (half an ulp, 2^-9 relative, of its own magnitude) before the float32 sum,
    where the unsharded decode rounds once: allow a few bf16 ulps of the tensor's scale."""
    if case.dtype != "bfloat16" and not case.autocast:
        return dict(rtol=1e-5, atol=1e-5)
    scale = 1.0 if ref is None or ref.numel() == 0 else float(ref.abs().max())
    return dict(rtol=2**-7, atol=2**-7 * scale)


@pytest.fixture(scope="module")
def reference():
    return {case.name: run_case(full_sae(case), case) for case in CASES}


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_selection_identical(world, case, reference, request):
    _, ranks = request.getfixturevalue(world)
    ref = reference[case.name]
    for r, res in enumerate(ranks):
        got = res["cases"][case.name]
        for key in ("indices", "aux_indices", "plain_indices"):
            assert torch.equal(got[key], ref[key]), f"rank {r}: {key} differs"


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_values_and_reconstructions_match(world, case, reference, request):
    _, ranks = request.getfixturevalue(world)
    ref = reference[case.name]
    for res in ranks:
        got = res["cases"][case.name]
        for key in ("values", "aux_values", "x_hat", "aux_recon", "plain_x_hat"):
            torch.testing.assert_close(got[key], ref[key], **_tolerance(case, ref[key]), msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradients_match(world, case, reference, request):
    """Each rank's parameter gradients are its slice of the full ones; b_dec and x get the sum."""
    _, ranks = request.getfixturevalue(world)
    ref = reference[case.name]
    for name in ("dW_enc", "db_enc", "dW_dec"):
        stitched = torch.cat([res["cases"][case.name][name] for res in ranks])
        torch.testing.assert_close(stitched, ref[name], **_tolerance(case, ref[name]), msg=lambda m, name=name: f"{name}: {m}")
    for res in ranks:
        for name in ("db_dec", "dx"):
            torch.testing.assert_close(res["cases"][case.name][name], ref[name], **_tolerance(case, ref[name]), msg=lambda m, name=name: f"{name}: {m}")
    bounds = [(res["cases"][case.name]["start"], res["cases"][case.name]["end"]) for res in ranks]
    assert bounds[0][0] == 0 and bounds[-1][1] == case.M
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


@pytest.fixture(scope="module")
def trained_reference():
    history, _ = train_steps(full_sae(TRAIN))
    return history


@pytest.mark.parametrize("world", WORLDS)
def test_training_steps_match(world, trained_reference, request):
    _, ranks = request.getfixturevalue(world)
    for step in range(TRAIN_STEPS):
        ref = trained_reference[step]
        for res in ranks:
            got = res["train"][step]
            assert torch.equal(got["indices"], ref["indices"]), f"step {step}: selection differs"
            assert torch.equal(got["aux_indices"], ref["aux_indices"]), f"step {step}: AuxK selection differs"
            torch.testing.assert_close(got["b_dec"], ref["b_dec"], rtol=1e-5, atol=1e-6)
        for name in ("W_enc", "b_enc", "W_dec"):
            stitched = torch.cat([res["train"][step][name] for res in ranks])
            torch.testing.assert_close(stitched, ref[name], rtol=1e-5, atol=1e-6,
                                       msg=lambda m, step=step, name=name: f"step {step} {name}: {m}")

"""Session fixtures: each multi-process run is spawned once and its results shared by the tests.

Order: 4 ranks (latent-sharded cases, training, a checkpoint), then 2 ranks (the same cases and
the 4-rank checkpoint resharded onto 2 ranks, saved again), then the 2 x 2 mesh.
"""

import pytest
import torch

from tests.distributed import workers


def _results(path, world):
    return [torch.load(path / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="session")
def world4(tmp_path_factory):
    out = tmp_path_factory.mktemp("world4")
    workers.spawn(workers.latent_parallel, 4, str(out))
    return out, _results(out, 4)


@pytest.fixture(scope="session")
def world2(tmp_path_factory, world4):
    out = tmp_path_factory.mktemp("world2")
    workers.spawn(workers.latent_parallel, 2, str(out), str(world4[0] / "ckpt"))
    return out, _results(out, 2)


@pytest.fixture(scope="session")
def mesh2x2(tmp_path_factory):
    out = tmp_path_factory.mktemp("mesh")
    workers.spawn(workers.mesh, 4, str(out))
    return out, _results(out, 4)

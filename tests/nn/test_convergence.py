"""A TopKSAE trained on synthetic sparse data: the loss falls, and backends train alike."""

import torch

from saekit.nn import DeadLatentTracker, TopKSAE, fvu


def _sparse_data(n, d=16, n_features=48, active=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(n_features, d, generator=g), dim=1)
    coeff = torch.rand(n, n_features, generator=g)
    mask = torch.zeros(n, n_features).scatter_(1, torch.rand(n, n_features, generator=g).argsort(1)[:, :active], 1)
    return (coeff * mask) @ features


def _train(backend, steps=300, seed=0):
    torch.manual_seed(seed)
    data = _sparse_data(4096)
    sae = TopKSAE(16, 64, 4, k_aux=16, backend=backend)
    tracker = DeadLatentTracker(64, threshold_tokens=2048)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        x = data[(step * 64) % 4096 :][:64]
        out = sae(x, dead=tracker.dead)
        loss = (out.x_hat - x).pow(2).sum(1).mean() + sae.auxk_loss(x, out) / 32
        opt.zero_grad()
        loss.backward()
        sae.remove_parallel_gradient_()
        opt.step()
        sae.normalize_decoder_()
        tracker.update(out.code.indices, out.code.values)
        losses.append(fvu(x, out.x_hat).item())
    return sae, losses, data


def test_training_lowers_fvu_and_backends_agree():
    sae_cpu, losses_cpu, data = _train("cpu")
    sae_ref, losses_ref, _ = _train("reference")
    first, last = sum(losses_cpu[:10]) / 10, sum(losses_cpu[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    # Same data, same init: both backends follow the same trajectory up to float rounding.
    assert abs(sum(losses_ref[-10:]) / 10 - last) < 0.05 * last + 1e-3
    with torch.no_grad():
        a, b = sae_cpu.encode(data[:256]), sae_ref.encode(data[:256])
    agree = (a.indices == b.indices).float().mean().item()
    assert agree > 0.9, agree

import math

import pytest
import torch
import torch.nn.functional as F

from common.losses import build_candidates, cross_entropy, kd_kl, sparse_kd_kl, union_topk_kl


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.unit
def test_cross_entropy_matches_torch_and_masks():
    z, y = _rand(2, 5, 11), torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
    y[1, 3:] = -100
    assert cross_entropy(z, y).item() == pytest.approx(
        F.cross_entropy(z.reshape(-1, 11), y.reshape(-1), ignore_index=-100).item(), rel=1e-6
    )
    assert cross_entropy(z, torch.full_like(y, -100)).item() == 0.0


@pytest.mark.unit
def test_cross_entropy_gradient_is_the_hand_formula_on_a_padded_weighted_bf16_batch():
    """dL/dz_t = w_t * (softmax(z_t) - onehot(y_t)) / #valid at valid positions, 0 at padded ones; the value is the
    unoptimised per-position formula (log_softmax over the last dimension, gathered), also from bf16 logits."""
    z = _rand(3, 4, 9).bfloat16().requires_grad_()
    y = torch.randint(0, 9, (3, 4), generator=torch.Generator().manual_seed(2))
    y[0, 2:], y[2, 1:] = -100, -100
    w = torch.rand(3, 4, generator=torch.Generator().manual_seed(3)) + 0.5
    mask = y != -100
    loss = cross_entropy(z, y, weights=w)
    zf = z.detach().float()
    nll = -zf.log_softmax(-1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
    assert loss.item() == pytest.approx(((nll * w)[mask]).sum().item() / mask.sum().item(), rel=1e-6)
    loss.backward()
    hand = (zf.softmax(-1) - F.one_hot(y.clamp(min=0), 9).float()) * (w * mask)[..., None] / mask.sum()
    assert z.grad.dtype == torch.bfloat16 and torch.isfinite(z.grad.float()).all()
    assert torch.allclose(z.grad.float(), hand, atol=4e-3)  # bf16 gradient rounding
    assert (z.grad.float()[~mask] == 0).all()


@pytest.mark.unit
def test_kd_kl_zero_for_equal_and_hand_value():
    z = _rand(2, 3, 7)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert kd_kl(z, z, mask, tau=2.0).item() == pytest.approx(0.0, abs=1e-6)
    t, s = torch.tensor([[[0.0, math.log(3.0)]]]), torch.tensor([[[0.0, 0.0]]])
    p = torch.tensor([0.25, 0.75])
    expect = (p * (p.log() - torch.tensor([0.5, 0.5]).log())).sum().item()
    assert kd_kl(s, t, torch.ones(1, 1, dtype=torch.bool), tau=1.0).item() == pytest.approx(expect, rel=1e-6)
    assert kd_kl(z, _rand(2, 3, 7, seed=5), torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


@pytest.mark.unit
def test_sparse_kd_equals_full_when_k_is_vocab():
    zs, zt = _rand(2, 4, 9), _rand(2, 4, 9, seed=3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    lp = F.log_softmax(zt, -1)
    v, i = lp.topk(9, -1)
    assert sparse_kd_kl(zs, i, v, mask, tau=2.0).item() == pytest.approx(kd_kl(zs, zt, mask, tau=2.0).item(), rel=1e-5)


def _setup(B=2, T=5, U=6, seed=0):
    zs = _rand(B, T, U, seed=seed).requires_grad_(True)
    lt = F.log_softmax(_rand(B, T, U, seed=seed + 1), -1)
    cm = torch.ones(B, T, U, dtype=torch.bool)
    cm[0, 1, 3:] = False
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4] = False
    return zs, lt, cm, mask


@pytest.mark.unit
def test_union_zero_when_teacher_equals_student():
    zs, _, cm, mask = _setup()
    lt = F.log_softmax(zs.detach(), -1)
    assert union_topk_kl(zs, lt, cm, mask, tau=1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_union_gradient_is_tau_over_T_times_qS_minus_qT(tau):
    zs, lt, cm, mask = _setup()
    loss = union_topk_kl(zs, lt, cm, mask, tau=tau)
    loss.backward()
    neg = float("-inf")
    qs = torch.softmax(torch.where(cm, zs.detach() / tau, torch.tensor(neg)), -1)
    qt = torch.softmax(torch.where(cm, lt / tau, torch.tensor(neg)), -1)
    n = mask.sum()
    expect = (tau / n) * (qs - qt) * mask[..., None] * cm
    torch.testing.assert_close(zs.grad, expect, atol=1e-6, rtol=1e-5)


@pytest.mark.unit
def test_union_excludes_rows_with_fewer_than_two_candidates_and_all_masked_is_zero():
    zs, lt, cm, mask = _setup()
    base = union_topk_kl(zs, lt, cm, mask).item()
    cm2 = cm.clone()
    cm2[0, 0, 1:] = False  # one candidate left at (0, 0): that position leaves the mean
    m2 = mask.clone()
    m2[0, 0] = False
    assert union_topk_kl(zs, lt, cm2, mask).item() == pytest.approx(union_topk_kl(zs, lt, cm, m2).item(), rel=1e-6)
    assert base > 0
    zero = union_topk_kl(zs, lt, cm, torch.zeros_like(mask))
    assert zero.item() == 0.0 and not torch.isnan(zero)
    zero.backward()
    assert torch.isfinite(zs.grad).all()
    # a -inf teacher value removes that candidate
    lt_inf = lt.clone()
    lt_inf[~cm] = float("-inf")
    assert union_topk_kl(zs, lt_inf, torch.ones_like(cm), mask).item() == pytest.approx(base, rel=1e-6)


@pytest.mark.unit
def test_reverse_and_jsd_hand_computed():
    zs = torch.tensor([[[0.0, 0.0]]])
    lt = torch.tensor([[[math.log(0.25), math.log(0.75)]]])
    cm, mask = torch.ones(1, 1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)
    p, q = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    rev = (q * (q.log() - p.log())).sum().item()
    assert union_topk_kl(zs, lt, cm, mask, direction="reverse").item() == pytest.approx(rev, rel=1e-6)
    m = 0.5 * p + 0.5 * q
    jsd = 0.5 * (p * (p.log() - m.log())).sum() + 0.5 * (q * (q.log() - m.log())).sum()
    assert union_topk_kl(zs, lt, cm, mask, direction="jsd", beta=0.5).item() == pytest.approx(jsd.item(), rel=1e-6)


@pytest.mark.unit
def test_union_equals_teacher_only_when_student_inside_teacher():
    K = torch.tensor([[[5, 2, 9, 7]]])
    S = torch.tensor([[[9, 5]]])
    u, k = build_candidates(S, K, "union"), build_candidates(S, K, "teacher")
    assert sorted(u[0, 0].tolist()) == sorted(k[0, 0].tolist()) == [2, 5, 7, 9]
    both = build_candidates(torch.tensor([[[1, 3, -1]]]), torch.tensor([[[3, 4, -1]]]), "union")
    assert sorted(x for x in both[0, 0].tolist() if x >= 0) == [1, 3, 4]
    assert build_candidates(S, K, "student")[0, 0].tolist() == [9, 5]


@pytest.mark.unit
def test_bf16_inputs_finite():
    zs, lt, cm, mask = _setup()
    out = union_topk_kl(zs.detach().bfloat16().requires_grad_(True), lt.bfloat16(), cm, mask)
    assert torch.isfinite(out)
    assert torch.isfinite(kd_kl(zs.bfloat16(), lt.bfloat16(), mask))


@pytest.mark.unit
def test_logits_at_matches_gather_and_gradients():
    from common.losses import logits_at

    torch.manual_seed(0)
    h = torch.randn(2, 5, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    ids = torch.randint(0, 30, (2, 5, 4))
    z = logits_at(h, w, ids, chunk=3)
    ref = torch.einsum("btd,btud->btu", h, w[ids])
    torch.testing.assert_close(z, ref)
    g = torch.randn_like(z)
    gh, gw = torch.autograd.grad((z * g).sum(), (h, w))
    rh, rw = torch.autograd.grad((ref * g).sum(), (h, w))
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)


@pytest.mark.unit
def test_sparse_kd_padded_rows_give_finite_gradients_and_weights():
    """Positions without cached entries (padding, the forced prefix: ids -1, log-probs -inf) contribute nothing: the
    loss equals the loss over the valid rows alone, and every gradient and updated weight stays finite."""
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 11)
    h = torch.randn(2, 5, 6)
    zt = torch.randn(2, 5, 11)
    v, i = torch.log_softmax(zt, -1).topk(4, -1)
    i[0, 3:], v[0, 3:] = -1, float("-inf")  # padding
    i[1, :2], v[1, :2] = -1, float("-inf")  # forced prefix
    mask = torch.ones(2, 5, dtype=torch.bool)
    log_z = torch.logsumexp(torch.log_softmax(zt, -1) / 2.0, -1)
    for lz in (None, log_z):
        opt = torch.optim.SGD(head.parameters(), lr=0.1)
        loss = sparse_kd_kl(head(h), i, v, mask, tau=2.0, teacher_log_z=lz)
        keep = i[..., 0] >= 0
        ref = sparse_kd_kl(
            head(h)[keep][None],
            i[keep][None],
            v[keep][None],
            mask[keep][None],
            tau=2.0,
            teacher_log_z=None if lz is None else lz[keep][None],
        )
        assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters())
        opt.step()
        assert all(torch.isfinite(p).all() for p in head.parameters())
    empty = sparse_kd_kl(
        head(h), torch.full_like(i, -1), torch.full_like(v, float("-inf")), mask, tau=2.0, teacher_log_z=log_z
    )
    empty.backward()
    assert empty.item() == 0.0 and all(torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.unit
def test_sparse_kd_rest_bucket_is_the_coarsened_kl():
    """With the teacher's tempered log-partition: KL between teacher and student coarsened to {top-k, rest} (a hand
    computation from the full distributions); equal to the full tempered KL when k = V; a lower bound otherwise."""
    tau = 2.0
    zs, zt = _rand(2, 3, 9, seed=1), _rand(2, 3, 9, seed=2)
    mask = torch.ones(2, 3, dtype=torch.bool)
    lp = F.log_softmax(zt, -1)
    log_z = torch.logsumexp(lp / tau, -1)
    v, i = lp.topk(9, -1)
    assert sparse_kd_kl(zs, i, v, mask, tau, teacher_log_z=log_z).item() == pytest.approx(
        kd_kl(zs, zt, mask, tau).item(), rel=1e-5
    )
    v, i = lp.topk(3, -1)
    qt, ps = F.softmax(zt / tau, -1), F.softmax(zs / tau, -1)
    qk, pk = qt.gather(-1, i), ps.gather(-1, i)
    qr, pr = 1 - qk.sum(-1), 1 - pk.sum(-1)
    expect = ((qk * (qk.log() - pk.log())).sum(-1) + qr * (qr.log() - pr.log())).mean() * tau**2
    got = sparse_kd_kl(zs, i, v, mask, tau, teacher_log_z=log_z)
    assert got.item() == pytest.approx(expect.item(), rel=1e-5)
    assert got.item() <= kd_kl(zs, zt, mask, tau).item() + 1e-6

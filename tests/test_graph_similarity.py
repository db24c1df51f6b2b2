"""Per-edge similarities (mmrobust.graph.similarity) and the two defences that use them: equal to the dense
``edges x features`` formulas they replace (JaccardGCN bit for bit, GNNGuard to fp64 rounding), gradients
included, on every code path (sparse rows, dense rows, several chunks, checkpointed chunks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torch_geometric")

from mmrobust.graph.defenses import GNNGuard  # noqa: E402
from mmrobust.graph.models import GCN, JaccardGCN  # noqa: E402
from mmrobust.graph.similarity import edge_cosine, edge_dot, edge_jaccard  # noqa: E402


def toy(density=0.2, n=30, f=40, e=150, dtype=torch.float64, binary=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g, dtype=dtype) * (torch.rand(n, f, generator=g) < density)
    if binary:
        x = (x != 0).to(dtype)
    x[3] = 0                                    # a node without features
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = torch.cat([ei, ei[:, :5], torch.tensor([[4, 3], [4, 3]])], 1)   # duplicates, self loops, empty row
    return x, ei


def old_jaccard(x, ei):   # the formula JaccardGCN used before (edges x features)
    xb = (x > 0).to(x.dtype)
    inter = (xb[ei[0]] * xb[ei[1]]).sum(1)
    return inter / (xb[ei[0]].sum(1) + xb[ei[1]].sum(1) - inter).clamp_min(1)


@pytest.mark.parametrize("density", [0.05, 0.2, 0.6])      # sparse path, sparse path, dense path
@pytest.mark.parametrize("chunk", [1, 37, 2 ** 22])          # one pair / one edge per chunk, several, one chunk
def test_edge_dot_matches_gathered_rows(density, chunk):
    x, ei = toy(density)
    saved = x.clone()
    ref = (x[ei[0]] * x[ei[1]]).sum(1)
    assert torch.allclose(edge_dot(x, ei, chunk), ref, rtol=0, atol=1e-12)
    xg = x.clone().requires_grad_()            # a gradient is needed: dense chunks under checkpointing
    out = edge_dot(xg, ei, chunk)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    v = torch.linspace(-1, 1, ei.shape[1], dtype=x.dtype)
    (grad,) = torch.autograd.grad((out * v).sum(), xg)
    xr = x.clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad(((xr[ei[0]] * xr[ei[1]]).sum(1) * v).sum(), xr)
    assert torch.allclose(grad, grad_ref, rtol=0, atol=1e-12)
    assert torch.equal(x, saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [5, 2 ** 22])
def test_edge_jaccard_is_bitwise_the_dense_formula(dtype, chunk):
    x, ei = toy(0.15, dtype=dtype, binary=True)
    assert torch.equal(edge_jaccard(x, ei, chunk), old_jaccard(x, ei))
    xc, _ = toy(0.5, dtype=dtype)              # real-valued features are binarised by x > 0, as before
    assert torch.equal(edge_jaccard(xc, ei, chunk), old_jaccard(xc, ei))


def test_edge_cosine_matches_torch():
    x, ei = toy(0.1)
    ref = F.cosine_similarity(x[ei[0]], x[ei[1]], dim=1, eps=1e-8)
    assert torch.allclose(edge_cosine(x, ei), ref, rtol=0, atol=1e-12)
    assert torch.allclose(edge_cosine(x, ei, chunk_elements=3), ref, rtol=0, atol=1e-12)


def test_bad_arguments_are_named():
    x, ei = toy()
    with pytest.raises(ValueError, match="chunk_elements"):
        edge_dot(x, ei, chunk_elements=0)
    with pytest.raises(ValueError, match="h must be"):
        edge_dot(x[0], ei)


class OldJaccardGCN(JaccardGCN):
    def forward(self, x, edge_index, edge_weight=None, batch=None):
        w = torch.ones(edge_index.shape[1], dtype=x.dtype) if edge_weight is None else edge_weight
        keep = (old_jaccard(x, edge_index) >= self.threshold) | (edge_index[0] == edge_index[1])   # loops stay
        return GCN.forward(self, x, edge_index, w * keep.to(x.dtype))


class OldGNNGuard(GNNGuard):
    def coefficients(self, h, edge_index, edge_weight, alive=None):
        src, dst = edge_index
        sim = F.cosine_similarity(h[src], h[dst], dim=1, eps=1e-8)
        keep = (sim >= self.threshold) & (src != dst)
        if alive is not None:
            keep &= alive
        s = torch.where(keep, sim, torch.zeros_like(sim)) * edge_weight
        return s / s.new_zeros(h.shape[0]).index_add(0, dst, s)[dst].clamp_min(1e-12)


def _outputs_and_grads(model, x, ei, w):
    w = w.clone().requires_grad_()
    x = x.clone().requires_grad_()
    out = model(x, ei, w)
    gw, gx = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(),
                                 [w, x])
    return out.detach(), gw, gx


@pytest.mark.parametrize("new_cls,old_cls,threshold", [(JaccardGCN, OldJaccardGCN, 0.05),
                                                       (GNNGuard, OldGNNGuard, 0.1)])
def test_defences_equal_their_dense_versions_fp64_with_edge_weight(new_cls, old_cls, threshold):
    x, ei = toy(0.3, binary=new_cls is JaccardGCN)
    x = x.abs()                                # GNNGuard prunes negative similarities; keep many edges
    w = torch.rand(ei.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.manual_seed(0)
    new = new_cls(x.shape[1], 3, threshold=threshold, hidden=8).double().eval()
    old = old_cls(x.shape[1], 3, threshold=threshold, hidden=8).double().eval()
    old.load_state_dict(new.state_dict())
    out, gw, gx = _outputs_and_grads(new, x, ei, w)
    out_ref, gw_ref, gx_ref = _outputs_and_grads(old, x, ei, w)
    # integer counts give JaccardGCN exactly the same mask, hence the same GCN: bit for bit.  (GNNGuard: the
    # featureless node 3 and its self loop give NaN gradients at the same places in both versions.)
    tol = dict(rtol=0, atol=0) if new_cls is JaccardGCN else dict(rtol=1e-10, atol=1e-12)
    for a, b in [(out, out_ref), (gw, gw_ref), (gx, gx_ref)]:
        torch.testing.assert_close(a, b, equal_nan=True, **tol)
    assert gw.nan_to_num().abs().sum() > 0     # gradients reach the relaxed edge weights
    with torch.no_grad():                      # no gradient anywhere: the sparse path; same output
        assert torch.allclose(new(x, ei, w), out_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jaccard_gcn_keeps_stored_self_loops_of_featureless_nodes(dtype):
    """A node with an empty feature row (CiteSeer has some) and a stored self loop: its self-Jaccard is 0, so the
    loop was pruned to weight 0; GCNConv keeps a stored loop's weight, so the node lost its own features (output
    = bias) and its degree 0 made the gradient of that weight NaN (PRBCD/GRBCD: NonFiniteError)."""
    x = torch.tensor([[0, 0, 0], [1, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=dtype)
    ei = torch.tensor([[0, 1, 2, 1, 3, 0, 1], [0, 2, 1, 3, 1, 1, 0]])     # node 0: loop + one edge, pruned
    torch.manual_seed(0)
    model = JaccardGCN(3, 2, hidden=4, threshold=0.01, dropout=0.0).to(dtype).eval()
    w = torch.ones(ei.shape[1], dtype=dtype, requires_grad=True)
    out = model(x, ei, w)
    (grad,) = torch.autograd.grad(out.sum(), w)
    assert bool(torch.isfinite(grad).all())
    plain = GCN(3, 2, hidden=4, dropout=0.0).to(dtype).eval()
    plain.load_state_dict(model.state_dict())
    kept = torch.tensor([True, True, True, True, True, False, False])    # Jaccard prunes only (0, 1) both ways
    torch.testing.assert_close(out, plain(x, ei[:, kept]))

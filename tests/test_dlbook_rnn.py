"""dlbook.rnn: cells against torch.nn.RNNCell/LSTMCell/GRUCell and nn.LSTM/nn.GRU, BPTT against autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dlbook import rnn, train

SEEDS = [0, 1, 2]
SHAPES = [(1, 1, 1), (1, 3, 4), (5, 2, 3), (4, 6, 1)]  # (N, D, H)


def _cell_weights(cell: nn.Module):
    return cell.weight_ih.detach(), cell.weight_hh.detach(), cell.bias_ih.detach(), cell.bias_hh.detach()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "D", "H"), SHAPES)
def test_rnn_cell_matches_nn_rnncell(seed, N, D, H):
    torch.manual_seed(seed)
    cell = nn.RNNCell(D, H).double()
    x, h = torch.randn(N, D, dtype=torch.float64), torch.randn(N, H, dtype=torch.float64)
    W_ih, W_hh, b_ih, b_hh = _cell_weights(cell)
    got = rnn.rnn_cell(x.numpy(), h.numpy(), W_ih.numpy(), W_hh.numpy(), (b_ih + b_hh).numpy())
    torch.testing.assert_close(got, cell(x, h).detach())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "D", "H"), SHAPES)
def test_lstm_cell_matches_nn_lstmcell(seed, N, D, H):
    torch.manual_seed(seed)
    cell = nn.LSTMCell(D, H).double()
    x, h, c = (torch.randn(N, s, dtype=torch.float64) for s in (D, H, H))
    h_ref, c_ref = cell(x, (h, c))
    h_got, c_got = rnn.lstm_cell(x, h, c, *_cell_weights(cell))
    torch.testing.assert_close(h_got, h_ref.detach())
    torch.testing.assert_close(c_got, c_ref.detach())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "D", "H"), SHAPES)
def test_gru_cell_matches_nn_grucell(seed, N, D, H):
    torch.manual_seed(seed)
    cell = nn.GRUCell(D, H).double()
    x, h = torch.randn(N, D, dtype=torch.float64), torch.randn(N, H, dtype=torch.float64)
    torch.testing.assert_close(rnn.gru_cell(x, h, *_cell_weights(cell)), cell(x, h).detach())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cells_unrolled_match_full_layers(seed, kind):
    torch.manual_seed(seed)
    T, N, D, H = 6, 3, 4, 5
    layer = (nn.LSTM if kind == "lstm" else nn.GRU)(D, H).double()
    xs = torch.randn(T, N, D, dtype=torch.float64)
    ref, _ = layer(xs)
    weights = [getattr(layer, f"{n}_l0").detach() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    h = torch.zeros(N, H, dtype=torch.float64)
    c = torch.zeros(N, H, dtype=torch.float64)
    outs = []
    for x in xs:
        if kind == "lstm":
            h, c = rnn.lstm_cell(x, h, c, *weights)
        else:
            h = rnn.gru_cell(x, h, *weights)
        outs.append(h)
    torch.testing.assert_close(torch.stack(outs), ref.detach())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("T", "N", "D", "H"), [(1, 1, 1, 1), (1, 2, 3, 4), (5, 1, 2, 3), (7, 3, 4, 2)])
def test_rnn_bptt_matches_nn_rnn_autograd(seed, T, N, D, H):
    torch.manual_seed(seed)
    layer = nn.RNN(D, H, nonlinearity="tanh", bias=True).double()
    with torch.no_grad():
        layer.bias_hh_l0.zero_()
    xs = torch.randn(T, N, D, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, N, H, dtype=torch.float64, requires_grad=True)
    dhs = torch.randn(T, N, H, dtype=torch.float64)
    hs, _ = layer(xs, h0)
    params = [xs, h0, layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0]
    ref = torch.autograd.grad(hs, params, grad_outputs=dhs)
    got = rnn.rnn_bptt(xs.detach(), h0[0].detach(), layer.weight_ih_l0.detach(), layer.weight_hh_l0.detach(),
                       layer.bias_ih_l0.detach(), dhs)
    assert len(got) == 5
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r.reshape(g.shape))


def test_rnn_bptt_rejects_wrong_dhs_shape():
    with pytest.raises(ValueError, match="dhs"):
        rnn.rnn_bptt(np.zeros((3, 1, 2)), np.zeros((1, 2)), np.eye(2), np.eye(2), np.zeros(2), np.zeros((2, 1, 2)))


def test_cells_reject_bad_shapes():
    with pytest.raises(ValueError, match="expected x"):
        rnn.rnn_cell(np.zeros(3), np.zeros((1, 2)), np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="4H"):
        rnn.lstm_cell(np.zeros((1, 3)), np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((6, 3)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match="3H"):
        rnn.gru_cell(np.zeros((1, 3)), np.zeros((1, 2)), np.zeros((8, 3)), np.zeros((8, 2)))


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5])
def test_gradient_norms_follow_the_spectral_scale_near_zero(scale):
    # With zero inputs the state stays at 0, tanh' = 1, and each step back multiplies by W_hh^T.
    H, T = 6, 12
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((H, H)))
    norms = rnn.gradient_norms_by_distance(scale * Q, np.zeros((T, 1, H)))
    assert norms.shape == (T,)
    np.testing.assert_allclose(norms, scale ** np.arange(1, T + 1), rtol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_char_rnn_shapes_and_causality(cell):
    torch.manual_seed(0)
    model = rnn.CharRNN(10, embed=4, hidden=8, cell=cell)
    ids = torch.randint(0, 10, (3, 7))
    out = model(ids)
    assert out.shape == (3, 7, 10)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 10
    torch.testing.assert_close(model(changed)[:, :5], out[:, :5])  # the future never leaks back
    assert train.count_parameters(model) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="cell"):
        rnn.CharRNN(10, cell="transformer")

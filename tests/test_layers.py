import pytest
import torch

from pmnist.models.layers import SeedLinear, _SeedLinearFn

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def layer_and_reference(S=3, n_in=7, n_out=5, device="cpu"):
    torch.manual_seed(0)
    layer = SeedLinear([torch.nn.Linear(n_in, n_out) for _ in range(S)]).to(device)
    reference = lambda x: torch.baddbmm(layer.bias.unsqueeze(1), x, layer.weight.transpose(1, 2))  # plain autograd
    return layer, reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("transpose_out", [False, True])
def test_seed_linear_equals_autograd_and_keeps_layouts(x_layout, transpose_out, device):
    """Same values and gradients as autograd's baddbmm, bit for bit, with W's gradient contiguous (it is
    added into the optimizer's flat buffer) and x's gradient in x's own layout."""
    layer, reference = layer_and_reference(device=device)
    shape = (3, 11, 7) if x_layout == "contiguous" else (3, 7, 11)
    base = torch.randn(*shape, device=device)
    base.requires_grad_(True)
    x = base if x_layout == "contiguous" else base.mT                       # [S, rows, in] either way
    y = layer(x, transpose_out=transpose_out)
    assert torch.equal(y, reference(x)) and y.mT.is_contiguous() == transpose_out
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, (base, layer.weight, layer.bias), grad_y)
    expected = torch.autograd.grad(reference(x), (base, layer.weight, layer.bias), grad_y)
    for got, want in zip(grads, expected):
        assert torch.equal(got, want)
    assert grads[1].is_contiguous() and grads[0].is_contiguous()   # base's gradient: no transposed copy


def test_seed_linear_gradients_are_right():
    """Finite differences in float64, for x contiguous and transposed, y plain and transposed."""
    w, b = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    for x in (torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64).mT):
        for transpose_out in (False, True):
            inputs = tuple(t.detach().requires_grad_(True) for t in (x, w, b))
            assert torch.autograd.gradcheck(lambda *t: _SeedLinearFn.apply(*t, transpose_out), inputs)

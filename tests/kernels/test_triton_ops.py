"""Every Triton kernel against its pure-torch reference (interpreter mode on CPU, see conftest.py)."""

import pytest
import torch

from fastsample.kernels import reference

triton_ops = pytest.importorskip("fastsample.kernels.triton_ops", reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_references_match_diffusers_and_torch():
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.normalization import RMSNorm

    x = torch.randn(2, 3, 5, 8)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    cos, sin = torch.randn(5, 8), torch.randn(5, 8)
    expected = apply_rotary_emb(norm(x), (cos, sin), use_real=True, use_real_unbind_dim=-1)
    torch.testing.assert_close(reference.qk_rmsnorm_rope(x, norm.weight, cos, sin), expected)
    q, k, v = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    bias = torch.zeros(2, 1, 1, 6)
    bias[1, ..., 3:] = -torch.inf
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(reference.attention(q, k, v, bias), expected)
    x, s, b = torch.randn(2, 3, 8), torch.randn(2, 8), torch.randn(2, 8)
    ln = torch.nn.LayerNorm(8, elementwise_affine=False, eps=1e-6)
    torch.testing.assert_close(reference.adaln_modulate(x, s, b), ln(x) * (1 + s[:, None]) + b[:, None])


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("width", [16, 72])
def test_adaln_and_gated_residual(dtype, tol, width):
    x = torch.randn(2, 7, width, device=DEVICE).to(dtype)
    scale, shift = (
        torch.randn(2, width, device=DEVICE).to(dtype),
        torch.randn(2, width, device=DEVICE).to(dtype),
    )
    y = torch.randn_like(x)
    got = triton_ops.adaln_modulate(x, scale, shift)
    assert got.dtype == dtype
    torch.testing.assert_close(
        got.float(), reference.adaln_modulate(x, scale, shift).float(), atol=tol, rtol=tol
    )
    got = triton_ops.gated_residual(x, scale, y)
    torch.testing.assert_close(got.float(), reference.gated_residual(x, scale, y).float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_qk_rmsnorm_rope(dtype, tol):
    x = torch.randn(2, 3, 5, 24, device=DEVICE).to(dtype)
    w = torch.randn(24, device=DEVICE)
    cos, sin = torch.randn(5, 24, device=DEVICE), torch.randn(5, 24, device=DEVICE)
    got = triton_ops.qk_rmsnorm_rope(x, w, cos, sin)
    torch.testing.assert_close(
        got.float(), reference.qk_rmsnorm_rope(x, w, cos, sin).float(), atol=tol, rtol=tol
    )
    with pytest.raises(ValueError, match="even"):
        triton_ops.qk_rmsnorm_rope(x[..., :23], w[:23], cos[:, :23], sin[:, :23])


@pytest.mark.parametrize("head_dim", [16, 72])
@pytest.mark.parametrize("masked", [False, True])
def test_attention(head_dim, masked):
    q = torch.randn(2, 2, 20, head_dim, device=DEVICE)
    k, v = torch.randn(2, 2, 33, head_dim, device=DEVICE), torch.randn(2, 2, 33, head_dim, device=DEVICE)
    bias = None
    if masked:  # PixArt-style caption mask: additive, one row per batch element, broadcast over heads
        bias = torch.zeros(2, 1, 1, 33, device=DEVICE)
        bias[0, ..., 9:] = -10000.0
    got = triton_ops.attention(q, k, v, bias)
    torch.testing.assert_close(got, reference.attention(q, k, v, bias), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="bias"):
        triton_ops.attention(q, k, v, torch.zeros(2, 1, 20, 33, device=DEVICE))


@pytest.mark.gpu
def test_attention_bf16_gpu():
    q, k, v = (torch.randn(2, 16, 256, 72, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch.testing.assert_close(
        triton_ops.attention(q, k, v), reference.attention(q, k, v), atol=2e-2, rtol=2e-2
    )


def test_qk_rmsnorm_rope_flux_layout_strides_and_out():
    """Flux's [B, S, H, Dh] layout, a strided input (a chunk of a fused QKV) and ``out=`` into a slice of a
    transposed buffer, against diffusers' RMSNorm + apply_rotary_emb(sequence_dim=1) and the reference."""
    from diffusers.models.embeddings import apply_rotary_emb

    qkv = torch.randn(2, 7, 3 * 3 * 16, device=DEVICE)
    x = qkv.chunk(3, dim=-1)[1].unflatten(-1, (3, 16))  # [B, S, H, Dh], not contiguous
    w = torch.randn(16, device=DEVICE)
    cos, sin = torch.randn(7, 16, device=DEVICE), torch.randn(7, 16, device=DEVICE)
    norm = torch.nn.RMSNorm(16, eps=1e-6).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(w)
        expected = apply_rotary_emb(norm(x), (cos, sin), sequence_dim=1)
    torch.testing.assert_close(reference.qk_rmsnorm_rope(x, w, cos, sin, sequence_dim=1), expected)
    got = triton_ops.qk_rmsnorm_rope(x, w, cos, sin, sequence_dim=1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    buffer = torch.full((2, 3, 10, 16), float("nan"), device=DEVICE)  # [B, H, S + 3, Dh]
    out = triton_ops.qk_rmsnorm_rope(x, w, cos, sin, sequence_dim=1, out=buffer.transpose(1, 2)[:, 3:])
    assert out.data_ptr() == buffer[:, :, 3:].data_ptr()
    torch.testing.assert_close(buffer[:, :, 3:].transpose(1, 2), expected, atol=1e-5, rtol=1e-5)
    assert buffer[:, :, :3].isnan().all()  # nothing written outside the slice
    with pytest.raises(ValueError, match="cos must be"):
        triton_ops.qk_rmsnorm_rope(x, w, cos[:6], sin, sequence_dim=1)
    with pytest.raises(ValueError, match="out must be"):
        triton_ops.qk_rmsnorm_rope(x, w, cos, sin, sequence_dim=1, out=buffer[:, :, 3:])
    with pytest.raises(ValueError, match="sequence_dim"):
        triton_ops.qk_rmsnorm_rope(x, w, cos, sin, sequence_dim=3)

"""A ViT image tower on the CPU in bf16, on oneDNN's packed linear kernels.

PyTorch runs a `nn.Linear` in bf16 through oneDNN, but reorders the weight into oneDNN's
blocked layout on every call, and nn.MultiheadAttention's fast path does the same for its
projections. Reordered once at load instead (`torch.ops.mkldnn._reorder_linear_weight`,
what inductor's weight prepacking uses), the products run closer to the matmul peak, and
the MLP's GELU is fused into its first product. Measured on the development machine
(docs/performance.md, "Packed linear kernels"), ViT-B-16 at batch 16 per block: the
MLP's first product and its GELU 22.8 -> 18.8 ms, the second product 17.5 -> 15.2 ms, the
attention's projections 18.5 -> 15.8 ms; the encoder ~8-20 % faster.

Only open_clip's own ViT blocks are packed (the ViT presets; MobileCLIP's timm towers are
convolutional and keep PyTorch's kernels), only on the CPU in bf16, and only when the
packed tower gives the unpacked tower's embeddings on a probe batch (cosine >= MIN_COSINE):
a PyTorch release that changed these internal operators leaves the model as it was, with
a warning. Attention itself stays plain matmuls and softmax: PyTorch's flash attention for
the CPU measured 2.5x slower here at 197 tokens.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# The packed tower must give the same embeddings as the unpacked one, to bf16 rounding
# (measured 0.99995 or more on ViT-B-16 and -32).
MIN_COSINE = 0.999
PROBE_IMAGES = 2


def kernels_available() -> bool:
    mkldnn = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_linear_pointwise")
        and hasattr(mkldnn, "_reorder_linear_weight")
    )


class PackedLinear(nn.Module):
    """`nn.Linear` (optionally followed by an exact GELU) with its weight packed once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False):
        super().__init__()
        self.out_features = int(weight.shape[0])
        # Plain attributes, not buffers: a packed tensor has no storage to copy or save.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
        self.bias = None if bias is None else bias.detach().contiguous()
        self.post_op = "gelu" if gelu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x, self.packed, self.bias, self.post_op, [], "none"
        )


class PackedSelfAttention(nn.Module):
    """Self-attention with nn.MultiheadAttention's call signature, as open_clip calls it
    (batch first, `need_weights=False`); packed projections, matmul-and-softmax attention."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.heads = mha.num_heads
        self.width = mha.embed_dim
        self.qkv = PackedLinear(mha.in_proj_weight, mha.in_proj_bias)
        self.out = PackedLinear(mha.out_proj.weight, mha.out_proj.bias)
        self.scale = (self.width // self.heads) ** -0.5

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        batch, tokens, width = query.shape
        qkv = self.qkv(query).view(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        weights = torch.matmul(q * self.scale, k.transpose(-1, -2))
        if attn_mask is not None:
            weights = weights + attn_mask
        mixed = torch.matmul(weights.softmax(-1), v)
        return self.out(mixed.transpose(1, 2).reshape(batch, tokens, width)), None


class PackedMLP(nn.Module):
    """open_clip's c_fc -> activation -> c_proj; the exact GELU is fused into c_fc."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        act = mlp.gelu
        fused = type(act) is nn.GELU and act.approximate == "none"
        self.c_fc = PackedLinear(mlp.c_fc.weight, mlp.c_fc.bias, gelu=fused)
        self.act = nn.Identity() if fused else act  # QuickGELU (OpenAI's weights) stays apart
        self.c_proj = PackedLinear(mlp.c_proj.weight, mlp.c_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


def _packable_blocks(visual: nn.Module) -> list[Any]:
    """open_clip's ResidualAttentionBlocks of a ViT tower, if every one can be packed."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = list(getattr(getattr(visual, "transformer", None), "resblocks", []))
    for block in blocks:
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        if not (
            type(block) is ResidualAttentionBlock
            and isinstance(attn, nn.MultiheadAttention)
            and attn.batch_first
            and attn._qkv_same_embed_dim
            and attn.in_proj_weight is not None
            and not hasattr(block, "ln_1_kv")
            and all(hasattr(mlp, name) for name in ("c_fc", "gelu", "c_proj"))
            and isinstance(mlp.c_fc, nn.Linear)
            and isinstance(mlp.c_proj, nn.Linear)
        ):
            return []
    return blocks


def pack_image_tower(visual: nn.Module, image_size: tuple[int, int]) -> bool:
    """Swap the blocks of a bf16 ViT tower on the CPU for packed ones, in place, if they
    give the same embeddings; returns whether it did. Anything else is left as it is."""
    blocks = _packable_blocks(visual)
    weight = next(visual.parameters(), None)
    if (
        not blocks
        or weight is None
        or weight.device.type != "cpu"
        or weight.dtype != torch.bfloat16
        or not kernels_available()
    ):
        return False
    height, width = image_size
    pixels = torch.randn(
        PROBE_IMAGES, 3, height, width, generator=torch.Generator().manual_seed(0)
    ).to(torch.bfloat16)
    originals = [(block.attn, block.mlp) for block in blocks]
    try:
        with torch.inference_mode():
            expected = visual(pixels).float()
            for block in blocks:
                block.attn = PackedSelfAttention(block.attn)
                block.mlp = PackedMLP(block.mlp)
            got = visual(pixels).float()
        cosine = float(F.cosine_similarity(expected, got).min())
        if cosine >= MIN_COSINE:
            return True
        reason = f"embeddings differ (cosine {cosine:.4f})"
    except (RuntimeError, TypeError, ValueError) as exc:  # an operator this torch lacks
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    for block, (attn, mlp) in zip(blocks, originals, strict=True):
        block.attn, block.mlp = attn, mlp
    log.warning("packed CPU kernels not used (PyTorch's own are): %s", reason)
    return False

"""Parameter-efficient fine-tuning of a pretrained backbone (`model.peft`): what trains of it.

- `none`: this module does nothing (`model.freeze` decides, as before);
- `full`: every backbone parameter trains; `linear_probe`: none does (the trunk frozen as
  `model.freeze: trunk`, its BatchNorm per `model.freeze_bn`), only the method's heads train;
- `bitfit` (Ben Zaken et al. 2022): only the backbone's bias terms (every parameter named `*bias`,
  LayerNorm biases included) train;
- `lora` (Hu et al. 2022) on the query and value projections of every ViT block: q += (α/r)·B_q A_q x,
  v += (α/r)·B_v A_v x, A (r×d) Kaiming-uniform like a Linear's weight, B (d×r) zero, so the block is
  unchanged at initialisation (LIFT: α = 1, i.e. a 1/r scaling);
- `adaptformer` (Chen et al. 2022): a bottleneck MLP s·up(ReLU(down(h))) parallel to each block's
  MLP, reading the MLP's input h (the block's second LayerNorm output, as the paper's figure), its
  output added to the MLP's; down Kaiming-normal, up zero (zero output at initialisation), the scale
  s learnable from 1 as in LIFT (`model.adaptformer_learn_scale: false` = the paper's fixed s).
  LIFT's adapter normalises the residual stream with a LayerNorm of its own instead of sharing the
  block's: both feed `down` an affine image of the same normalised tokens, so they span the same
  functions (the affine folds into `down`);
- `vpt_shallow` / `vpt_deep` (Jia et al. 2022): `model.vpt_length` learnable prompt tokens appended
  to the token sequence before the first block (shallow), or replaced by fresh ones before every
  block (deep); removed after the last block, so pooling sees the original tokens. Initialised
  uniform(±sqrt(6 / (3·p² + d))) for patch size p and width d, as VPT.

Everything else of the backbone is frozen (`requires_grad=False`: out of the optimiser, no graph
through it). The ViT modules work on timm `VisionTransformer` blocks (`attn.qkv` a fused Linear,
`mlp`) and open_clip ViT towers (`attn` a `nn.MultiheadAttention`, `mlp`). The added modules keep
every library key as it was (LoRA takes over the projection's own weight and bias; the adapter and
the prompts are new children of each block, called through forward hooks bound to them, which a
deep copy such as the EMA's carries along), so pretrained weights load before or after them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fasttrain.schema import ConfigError

PEFT_MODES = ("none", "linear_probe", "full", "bitfit", "lora", "adaptformer", "vpt_shallow", "vpt_deep")
VIT_MODES = ("lora", "adaptformer", "vpt_shallow", "vpt_deep")  # need ViT blocks
KINDS = ("lora", "adaptformer", "vpt")  # names of the added modules, also the report's module types


# --------------------------------------------------------------------------------------------
# The modules
# --------------------------------------------------------------------------------------------


class LowRank(nn.Module):
    """x -> x A^T B^T: A (rank x d_in) like a Linear's default weight, B (d_out x rank) zero."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.a = nn.Parameter(torch.empty(rank, d_in))
        self.b = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.a.to(x.dtype)), self.b.to(x.dtype))


class LoRAQKV(nn.Module):
    """A fused qkv Linear (timm) with low-rank updates of q and v; keeps `weight` / `bias`."""

    def __init__(self, qkv: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.weight = qkv.weight
        self.bias = qkv.bias
        d = qkv.out_features // 3
        self.lora_q = LowRank(qkv.in_features, d, rank)
        self.lora_v = LowRank(qkv.in_features, d, rank)
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.weight, self.bias).chunk(3, dim=-1)
        return torch.cat([q + self.scaling * self.lora_q(x), k, v + self.scaling * self.lora_v(x)], dim=-1)


class LoRAMultiheadAttention(nn.Module):
    """Self-attention of a `nn.MultiheadAttention` (open_clip's blocks) with low-rank updates of
    q and v; keeps its `in_proj_weight`, `in_proj_bias` and `out_proj`, so its keys."""

    def __init__(self, mha: nn.MultiheadAttention, rank: int, alpha: float):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise ConfigError("model.peft: lora needs self-attention with one fused input projection")
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.num_heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        d = mha.embed_dim
        self.lora_q = LowRank(d, d, rank)
        self.lora_v = LowRank(d, d, rank)
        self.scaling = alpha / rank

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None, **_) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("LoRAMultiheadAttention: self-attention only (key and value are the query)")
        x = query if self.batch_first else query.transpose(0, 1)  # (B, N, D)
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q = q + self.scaling * self.lora_q(x)
        v = v + self.scaling * self.lora_v(x)
        q, k, v = (t.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


class AdaptFormer(nn.Module):
    """s · up(ReLU(down(h))), added to the output of the block's MLP (a forward hook on it)."""

    def __init__(self, dim: int, bottleneck: int, scale: float, learn_scale: bool):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor([float(scale)]))
        else:
            self.register_buffer("scale", torch.tensor([float(scale)]), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(h))) * self.scale.to(h.dtype)

    def add_to_mlp(self, mlp: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self(args[0])


class Prompts(nn.Module):
    """`length` prompt tokens of width `dim`, appended to a block's input (forward pre-hooks)."""

    def __init__(self, length: int, dim: int, patch: int, replace: bool):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(length, dim))
        bound = math.sqrt(6.0 / (3 * patch * patch + dim))
        nn.init.uniform_(self.tokens, -bound, bound)
        self.replace = replace  # drop the previous block's prompts first (deep VPT, blocks after the first)

    def _prompts(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)

    def prepend_hook(self, block: nn.Module, args: tuple):
        x = args[0]
        if self.replace:
            x = x[:, :-self.tokens.shape[0]]
        return (torch.cat([x, self._prompts(x)], dim=1), *args[1:])

    def remove_hook(self, block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output[:, :-self.tokens.shape[0]]


# --------------------------------------------------------------------------------------------
# The ViT layouts
# --------------------------------------------------------------------------------------------


@dataclass
class VitLayout:
    blocks: list[nn.Module]
    width: int
    patch: int
    attention: str  # "qkv" (timm: block.attn.qkv) | "mha" (open_clip: block.attn)


def vit_layout(backbone) -> VitLayout | None:
    """The blocks of a timm VisionTransformer or an open_clip ViT tower, or None."""
    trunk = backbone.trunk
    visual = getattr(trunk, "visual", None)
    if visual is not None and hasattr(visual, "transformer") and hasattr(visual, "conv1"):
        tr = visual.transformer
        if not getattr(tr, "batch_first", True):
            return None
        blocks = list(tr.resblocks)
        if not blocks or not all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks):
            return None
        patch = visual.conv1.kernel_size[0]
        return VitLayout(blocks, tr.width, patch, "mha")
    blocks = getattr(trunk, "blocks", None)
    embed = getattr(trunk, "patch_embed", None)
    if blocks is None or embed is None or not hasattr(embed, "proj"):
        return None
    blocks = list(blocks)
    if not blocks or not all(isinstance(getattr(getattr(b, "attn", None), "qkv", None), nn.Linear)
                             and hasattr(b, "mlp") for b in blocks):
        return None
    kernel = embed.proj.kernel_size
    return VitLayout(blocks, blocks[0].attn.qkv.in_features, kernel[0] if isinstance(kernel, tuple) else kernel, "qkv")


def lift_dim(num_classes: int | None, blocks: int, key: str) -> int:
    """LIFT's default bottleneck / rank: 2^max(0, floor(log2(C / (2 L))))."""
    if not num_classes:
        raise ConfigError(f"model.{key}: null (LIFT's rule from the class count) needs the dataset's class count; "
                          "give a number")
    return 2 ** max(0, int(math.log2(num_classes / (2 * blocks))))


# --------------------------------------------------------------------------------------------
# Applying a mode
# --------------------------------------------------------------------------------------------


def apply_peft(backbone, m, num_classes: int | None = None) -> None:
    """Apply `m.peft` (a ModelConfig's) to `backbone` in place; see the module docstring."""
    mode = m.peft
    if mode not in PEFT_MODES:
        raise ConfigError(f"model.peft: expected one of {list(PEFT_MODES)}, got {mode!r}")
    if mode in ("none", "full"):
        return
    if mode == "linear_probe":
        from fasttrain.backbones.freeze import TRUNK, freeze

        freeze(backbone, TRUNK, m.freeze_bn)
        backbone.requires_grad_(False)  # an extra block too: the heads alone train
        return
    if mode == "bitfit":
        for name, p in backbone.named_parameters():
            p.requires_grad_(name.endswith("bias"))
        return
    layout = vit_layout(backbone)
    if layout is None:
        raise ConfigError(f"model.peft: {mode} needs ViT blocks (timm VisionTransformer models, open_clip ViT "
                          f"towers); {backbone.arch} has none (linear_probe, full and bitfit work on any backbone)")
    backbone.requires_grad_(False)
    n = len(layout.blocks)
    if mode == "lora":
        rank = m.peft_rank or lift_dim(num_classes, n, "peft_rank")
        for block in layout.blocks:
            if layout.attention == "qkv":
                block.attn.qkv = LoRAQKV(block.attn.qkv, rank, m.lora_alpha)
            else:
                block.attn = LoRAMultiheadAttention(block.attn, rank, m.lora_alpha)
    elif mode == "adaptformer":
        dim = m.adaptformer_dim or lift_dim(num_classes, n, "adaptformer_dim")
        for block in layout.blocks:
            block.adaptformer = AdaptFormer(layout.width, dim, m.adaptformer_scale, m.adaptformer_learn_scale)
            block.mlp.register_forward_hook(block.adaptformer.add_to_mlp)
    else:
        deep = mode == "vpt_deep"
        prompted = layout.blocks if deep else layout.blocks[:1]
        for i, block in enumerate(prompted):
            block.vpt = Prompts(m.vpt_length, layout.width, layout.patch, replace=i > 0)
            block.register_forward_pre_hook(block.vpt.prepend_hook)
        layout.blocks[-1].register_forward_hook(prompted[-1].vpt.remove_hook)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _kind(name: str) -> str | None:
    parts = name.split(".")
    for kind, marks in (("lora", ("lora_q", "lora_v")), ("adaptformer", ("adaptformer",)), ("vpt", ("vpt",))):
        if any(p in marks for p in parts):
            return kind
    return None


def parameter_counts(model: nn.Module, backbone: nn.Module) -> dict[str, tuple[int, int]]:
    """{module type: (trainable, total) scalars}: the PEFT modules by kind, the rest of the backbone
    (`backbone`; `backbone bias` apart under bitfit-like splits), and the heads (outside it)."""
    in_backbone = {id(p) for p in backbone.parameters()}
    counts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        if id(p) in in_backbone:
            kind = _kind(name) or ("backbone bias" if name.endswith("bias") else "backbone")
        else:
            kind = "heads"
        c = counts.setdefault(kind, [0, 0])
        c[1] += p.numel()
        if p.requires_grad:
            c[0] += p.numel()
    order = list(KINDS) + ["backbone", "backbone bias", "heads"]
    return {k: (counts[k][0], counts[k][1]) for k in order if k in counts}


def describe(mode: str, counts: dict[str, tuple[int, int]]) -> str:
    trainable = sum(t for t, _ in counts.values())
    total = sum(n for _, n in counts.values())
    parts = ", ".join(f"{k} {t:,} / {n:,}" for k, (t, n) in counts.items())
    share = 100 * trainable / max(total, 1)
    return (f"model.peft={mode}: {trainable:,} of {total:,} parameters trainable ({share:.2f} %); "
            f"trainable / total by module type: {parts}")

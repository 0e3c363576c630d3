"""BST rewritten for inference, in LightSeq's spirit (whose subject is exactly this encoder layer), on a CPU.

The exported graph runs the transformer over ``B * (L + 1)`` tokens, most of them padding (histories are
short, ``L`` is the longest), and masks afterwards. Here:

* **Padding removal.** Only the ``N`` real history items and the ``B`` targets are embedded, projected,
  layer-normed and fed forward (``[N + B, D]`` rows instead of ``[B * (L + 1), D]``). The attention alone
  needs a rectangle: the packed Q/K/V rows are scattered (one ``index_copy_``) into a ``[B, W]`` layout
  with ``W = 1 + the batch's longest history`` (not ``L + 1``), each row's target right after its last
  item, and ``scaled_dot_product_attention`` masks the keys past it.
* **Target-only last layer.** With ``pooling="target"`` only the target token's output is read, so the
  last layer computes one query per row and its output projection, norms and feed-forward network run
  on ``B`` rows.
* **Folded and fused ops.** The ``1 / sqrt(d)`` scale is folded into the query rows of the (already single)
  QKV projection; attention is one fused SDPA kernel; layer norm is one kernel per call.
* **Buffers reused.** The rectangle is a per-thread workspace that only grows: no allocation or zeroing
  per call (stale entries lie past each row's mask, and are finite, so they never reach a result).

Everything else (embedding table, positions, norms, feed-forward weights, bag pooling, the MLP) is the
trained model's own modules, so any BST configuration is served; scores equal the reference model's up to
float rounding (parity tested within ``PARITY_TOLERANCE``).
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctrzoo.features.layout import PADDING_ID
from ctrzoo.nn.transformer import TransformerLayer


class _Workspace(threading.local):
    """A per-thread flat float buffer that grows to the largest request and is then reused."""

    def __init__(self) -> None:
        self.buffer = torch.zeros(0)

    def take(self, rows: int, cols: int, dtype: torch.dtype) -> Tensor:
        if self.buffer.numel() < rows * cols or self.buffer.dtype != dtype:
            self.buffer = torch.zeros(rows * cols, dtype=dtype)  # zeros: every entry finite from the first call on
        return self.buffer[: rows * cols].view(rows, cols)


class PackedEncoder(nn.Module):
    """One sequence's stack of ``TransformerLayer`` over packed tokens: ``ids [B, L]``, ``target [B, D]`` ->
    the pooled output ``[B, D]`` (``[B, (L + 1) * D]`` for ``concat``), as ``BST.encode``."""

    def __init__(self, positions: Tensor, layers: nn.ModuleList, pooling: str) -> None:
        super().__init__()
        self.positions = positions
        self.layers = layers  # the trained layers (shared parameters)
        self.pooling = pooling
        self.num_heads = self.layers[0].num_heads
        dim = positions.shape[1]
        scale = torch.ones(3 * dim)
        scale[:dim] = 1.0 / math.sqrt(dim // self.num_heads)
        for i, layer in enumerate(self.layers):  # the scale folded into the query rows of W_in, b_in
            self.register_buffer(f"in_weight{i}", layer.in_proj.weight.detach() * scale.unsqueeze(1))
            self.register_buffer(f"in_bias{i}", layer.in_proj.bias.detach() * scale)
        self.workspace = _Workspace()

    def forward(self, ids: Tensor, target: Tensor, table: nn.Module) -> Tensor:
        batch, length = ids.shape
        dim, heads = target.shape[1], self.num_heads
        keep = ids != PADDING_ID
        row, col = keep.nonzero(as_tuple=True)  # the real items, row-major
        lengths = keep.sum(1)
        n_real = row.numel()
        width = int(lengths.max()) + 1 if batch else 1  # the rectangle: longest history + the target
        all_rows = torch.arange(batch)
        x = torch.cat([table(ids[keep]) + self.positions[lengths[row] - col], target + self.positions[0]])  # [T, D]
        token_row = torch.cat([row, all_rows])
        flat = token_row * width + torch.cat([col, lengths])  # each target right after its row's last item
        key_mask = (torch.arange(width) <= lengths.unsqueeze(1))[:, None, None, :]  # [B, 1, 1, W]
        for i, layer in enumerate(self.layers):
            qkv = F.linear(x, getattr(self, f"in_weight{i}"), getattr(self, f"in_bias{i}"))  # [T, 3D]
            rect = self.workspace.take(batch * width, 3 * dim, qkv.dtype)
            rect.index_copy_(0, flat, qkv)
            q, k, v = rect.view(batch, width, 3, heads, -1).permute(2, 0, 3, 1, 4)  # each [B, H, W, d]
            if self.pooling == "target" and i == len(self.layers) - 1:  # only the target's output is read
                x = x[n_real:]
                q = qkv[n_real:, :dim].view(batch, heads, 1, -1)
                attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=1.0).view(batch, dim)
            else:
                attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=1.0)
                attended = attended.transpose(1, 2).reshape(batch * width, dim).index_select(0, flat)
            x = _post_attention(layer, x, attended)
        if self.pooling == "target":
            return x[-batch:]
        if self.pooling == "mean":
            return x.new_zeros(batch, dim).index_add_(0, token_row, x) / (lengths + 1).unsqueeze(1).to(x.dtype)
        slots = torch.cat([row * (length + 1) + col, all_rows * (length + 1) + length])  # concat: the model's slots
        return x.new_zeros(batch * (length + 1), dim).index_copy_(0, slots, x).view(batch, -1)


def _post_attention(layer: TransformerLayer, x: Tensor, attended: Tensor) -> Tensor:
    """The rest of ``TransformerLayer.forward`` (eval mode: no dropout) on packed rows ``[T, D]``."""
    n1, n2 = layer.norm1, layer.norm2
    s = F.layer_norm(x + layer.out_proj(attended), n1.normalized_shape, n1.weight, n1.bias, n1.eps)
    ffn = layer.ffn_out(F.leaky_relu(layer.ffn_in(s)))
    return F.layer_norm(s + ffn, n2.normalized_shape, n2.weight, n2.bias, n2.eps)


class FusedBST(nn.Module):
    """The inference form of a trained ``BST`` (eval mode), sharing its parameters: logits ``[B]``."""

    def __init__(self, bst: nn.Module):
        super().__init__()
        bst = bst.eval()
        self.table = bst.embedding  # a FeatureEmbedding: any shape of ids -> [..., D]
        self.sequences = list(bst.sequences)
        self.encoders = nn.ModuleList(PackedEncoder(bst.positions[i], bst.encoders[i], bst.pooling)
                                      for i in range(len(self.sequences)))
        self.bags = bst.bags
        self.deep = bst.deep
        self.head = bst.head

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields = self.table(sparse)
        parts = [fields.flatten(1), dense]
        for encoder, (k, target) in zip(self.encoders, self.sequences):
            parts.append(encoder(seq[:, k], fields[:, target], self.table))
        if self.bags.slots:  # bags are short: pooled as padded
            ids = seq[:, self.bags.slots]
            parts.append(self.bags(self.table(ids), ids != PADDING_ID))
        return self.head(self.deep(torch.cat(parts, dim=1))).squeeze(-1)

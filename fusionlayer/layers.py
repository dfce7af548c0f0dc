"""Small reusable Mixer pieces (paper Eq. 1): MLP, token mixing, channel mixing.

The token-mixing MLP is position-specific: its weights index positions counted from the *end* of
the sequence (the newest item sits at index L_max - 1). A sequence shorter than ``L_max`` uses the
last L rows/columns of the weights, which equals left-padding it with zeros to ``L_max``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MlpBlock", "TokenMixingMlp", "MixerBlock", "GroupedLinear", "GroupedLayerNorm", "GroupedMixerBlock"]


class MlpBlock(nn.Module):
    """Two-layer MLP with GELU: Linear -> GELU -> Linear -> Dropout.

    Dropout acts on the output only: on CPU, sampling a mask for the (wider) hidden activations
    costs as much as the matmuls themselves.

    Args:
        in_features: input and output width.
        hidden_features: hidden width.
        dropout: dropout probability.
    """

    def __init__(self, in_features: int, hidden_features: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # p = 0 still costs a copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class TokenMixingMlp(MlpBlock):
    """An :class:`MlpBlock` across positions that accepts any length L <= ``max_seq_length``.

    Args:
        max_seq_length: L_max, the number of positions the weights cover.
        hidden_features: hidden width (fixed, so cost is linear in L).
        dropout: dropout probability.
    """

    def __init__(self, max_seq_length: int, hidden_features: int, *, dropout: float = 0.0) -> None:
        super().__init__(max_seq_length, hidden_features, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[-1]  # x: (B, D, L), newest item last
        h = F.gelu(F.linear(x, self.fc1.weight[:, -L:], self.fc1.bias))
        return self.drop(F.linear(h, self.fc2.weight[-L:], self.fc2.bias[-L:]))

    def mix_positions_first(self, x: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """The same map on ``(L, C)`` (positions first, C = batch x features): plain matmuls, no transposes.

        Returns ``(L, C)``, or ``(C,)`` at the newest position with ``last_only``.
        """
        L = x.shape[0]
        h = F.gelu(torch.addmm(self.fc1.bias.unsqueeze(1), self.fc1.weight[:, -L:], x))  # (T, C)
        if last_only:  # addmv is not on every device's autocast list: its operands take h's dtype (a no-op without it)
            bias, weight = self.fc2.bias[-1].to(h.dtype), self.fc2.weight[-1].to(h.dtype)
            return self.drop(torch.addmv(bias.expand(h.shape[1]), h.t(), weight))
        return self.drop(torch.addmm(self.fc2.bias[-L:].unsqueeze(1), self.fc2.weight[-L:], h))


class MixerBlock(nn.Module):
    """One Mixer block: token mixing then channel mixing, each pre-LayerNorm with a residual.

    ``mask`` ``(B, L, 1)``, float, 1 = real item) zeroes padded positions of the token-mixing input,
    the only place where positions meet, so padded content never reaches a real position. Outputs at
    padded positions are not zeroed (their values are never read); the caller masks its final output.
    Padded inputs must be finite (NaN * 0 is NaN): :class:`~fusionlayer.FeatureFusionLayer` zeroes them.

    Args:
        hidden_size: D, the channel width.
        max_seq_length: L_max for the token-mixing weights.
        token_hidden_size: token-mixing hidden width.
        channel_hidden_size: channel-mixing hidden width.
        dropout: dropout probability.
        layer_norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        hidden_size: int,
        max_seq_length: int,
        *,
        token_hidden_size: int = 64,
        channel_hidden_size: int = 256,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp_tokens = TokenMixingMlp(max_seq_length, token_hidden_size, dropout=dropout)
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp_channels = MlpBlock(hidden_size, channel_hidden_size, dropout=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, last_only: bool = False,
                positions_first: bool = False) -> torch.Tensor:
        """``(B, L, D) -> (B, L, D)``, or ``(B, D)`` at the newest position with ``last_only``.

        ``positions_first``: ``x`` is ``(L, B, D)`` and ``mask`` ``(L, B, 1)`` (and so is the output),
        the layout :class:`~fusionlayer.FeatureFusionLayer` keeps between blocks.
        """
        if not positions_first:
            out = self.forward(x.transpose(0, 1), mask.transpose(0, 1), last_only=last_only, positions_first=True)
            return out if last_only else out.transpose(0, 1)
        L, B, D = x.shape  # (positions, batch, features)
        mixed = self.mlp_tokens.mix_positions_first((self.norm1(x) * mask).reshape(L, B * D), last_only=last_only)
        x = x[-1] + mixed.view(B, D) if last_only else x + mixed.view(L, B, D)  # channel mixing is per position
        return x + self.mlp_channels(self.norm2(x))


# ---------------------------------------------------------------------------------------------- grouped streams
# The Feature Mixer runs one stack of Mixer blocks per modality stream, all of the same shape. Run apart, each
# block is ~11 small operations per stream (thin matmuls, LayerNorm, GELU over (L, B, H) activations); on the
# sizes attach() uses, launch overhead dominates. The grouped modules below hold the M streams' weights stacked on
# a leading axis and run every stream at once: batched matmuls (torch.baddbmm) with per-stream weights, one
# LayerNorm over the stacked tensor. Same function, M times fewer operations; FeatureFusionLayer uses them for
# inference and GPU calls, and runs CPU training stream by stream on their slices (GroupedMixerBlock.stream_forward).


class GroupedLinear(nn.Module):
    """M independent Linears ``in_features -> out_features`` applied to ``(M, N, in)`` stacks: ``(M, N, out)``.

    ``weight`` is ``(M, out, in)`` and ``bias`` ``(M, out)``: stream m's rows are an ``nn.Linear``'s weight and bias.
    """

    def __init__(self, num_streams: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_streams, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_streams, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class GroupedLayerNorm(nn.Module):
    """M LayerNorms over the last axis of ``(M, ..., H)`` stacks; ``weight`` and ``bias`` are ``(M, H)``."""

    def __init__(self, num_streams: int, hidden_size: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_streams, hidden_size))
        self.bias = nn.Parameter(torch.zeros(num_streams, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return torch.addcmul(self.bias.view(shape), normed, self.weight.view(shape))


class GroupedMixerBlock(nn.Module):
    """M :class:`MixerBlock` s of the same shape, one per stream, run together on positions-first stacks.

    ``forward(x, mask)``: ``x`` ``(M, L, B, D)`` (stream, position, batch, feature), ``mask`` ``(L, B, 1)`` float
    (1 = real item), shared by the streams; returns ``(M, L, B, D)``. Stream m computes exactly what a
    :class:`MixerBlock` with the m-th slice of every weight computes (token mixing across positions, channel mixing
    per position, pre-LayerNorm, residuals, the mask on the token-mixing input).

    Parameters keep the names of :class:`MixerBlock` 's, stacked on a leading stream axis (``norm1.weight``
    ``(M, D)``, ``mlp_tokens.fc1.weight`` ``(M, T, L_max)``, ...): :meth:`from_blocks` stacks M blocks.
    """

    def __init__(self, num_streams: int, hidden_size: int, max_seq_length: int, *, token_hidden_size: int = 64,
                 channel_hidden_size: int = 256, dropout: float = 0.0, layer_norm_eps: float = 1e-6) -> None:
        super().__init__()
        M = num_streams
        self.norm1 = GroupedLayerNorm(M, hidden_size, eps=layer_norm_eps)
        self.mlp_tokens = nn.Module()
        self.mlp_tokens.fc1 = GroupedLinear(M, max_seq_length, token_hidden_size)
        self.mlp_tokens.fc2 = GroupedLinear(M, token_hidden_size, max_seq_length)
        self.norm2 = GroupedLayerNorm(M, hidden_size, eps=layer_norm_eps)
        self.mlp_channels = nn.Module()
        self.mlp_channels.fc1 = GroupedLinear(M, hidden_size, channel_hidden_size)
        self.mlp_channels.fc2 = GroupedLinear(M, channel_hidden_size, hidden_size)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def from_blocks(cls, blocks: list[MixerBlock]) -> "GroupedMixerBlock":
        """The M blocks' weights stacked (copied) into one grouped block, stream m = ``blocks[m]``."""
        first = blocks[0]
        grouped = cls(len(blocks), first.norm1.normalized_shape[0], first.mlp_tokens.fc1.in_features,
                      token_hidden_size=first.mlp_tokens.fc1.out_features,
                      channel_hidden_size=first.mlp_channels.fc1.out_features,
                      dropout=getattr(first.mlp_channels.drop, "p", 0.0), layer_norm_eps=first.norm1.eps)
        with torch.no_grad():
            for name, param in grouped.named_parameters():
                param.copy_(torch.stack([block.get_parameter(name) for block in blocks]))
        return grouped

    def stream_forward(self, x: torch.Tensor, mask: torch.Tensor, s: int) -> torch.Tensor:
        """Stream ``s`` alone, ``(L, B, D) -> (L, B, D)``, with the s-th slice of every weight: the per-stream
        computation (2-D matmuls, LayerNorm with its affine fused). On CPU, a training step over large activations
        runs faster this way than stacked: the stack, its copies and the batched matmuls' backward cost more memory
        traffic than the operations saved (``FeatureFusionLayer`` chooses)."""
        L, B, D = x.shape
        tokens, channels, n1, n2 = self.mlp_tokens, self.mlp_channels, self.norm1, self.norm2
        h = (F.layer_norm(x, (D,), n1.weight[s], n1.bias[s], n1.eps) * mask).reshape(L, B * D)
        h = F.gelu(torch.addmm(tokens.fc1.bias[s].unsqueeze(1), tokens.fc1.weight[s, :, -L:], h))
        h = torch.addmm(tokens.fc2.bias[s, -L:].unsqueeze(1), tokens.fc2.weight[s, -L:], h)
        x = x + self.drop(h).view(L, B, D)
        c = F.layer_norm(x, (D,), n2.weight[s], n2.bias[s], n2.eps)
        c = F.linear(F.gelu(F.linear(c, channels.fc1.weight[s], channels.fc1.bias[s])), channels.fc2.weight[s],
                     channels.fc2.bias[s])
        return x + self.drop(c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        M, L, B, D = x.shape
        tokens, channels = self.mlp_tokens, self.mlp_channels
        h = (self.norm1(x) * mask).view(M, L, B * D)  # the mask on the token-mixing input: padding reaches no one
        h = F.gelu(torch.baddbmm(tokens.fc1.bias.unsqueeze(2), tokens.fc1.weight[:, :, -L:], h))  # (M, T, B*D)
        h = torch.baddbmm(tokens.fc2.bias[:, -L:].unsqueeze(2), tokens.fc2.weight[:, -L:], h)  # (M, L, B*D)
        x = x + self.drop(h).view(M, L, B, D)
        c = self.norm2(x).view(M, L * B, D)
        c = channels.fc2(F.gelu(channels.fc1(c)))
        return x + self.drop(c).view(M, L, B, D)

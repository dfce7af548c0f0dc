"""Small reusable Mixer pieces (paper Eq. 1): MLP, token mixing, channel mixing.

The token-mixing MLP is position-specific: its weights index positions counted from the *end* of
the sequence (the newest item sits at index L_max - 1). A sequence shorter than ``L_max`` uses the
last L rows/columns of the weights, which equals left-padding it with zeros to ``L_max``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MlpBlock", "TokenMixingMlp", "MixerBlock"]


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
        self.drop = nn.Dropout(dropout)

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


class MixerBlock(nn.Module):
    """One Mixer block: token mixing then channel mixing, each pre-LayerNorm with a residual.

    ``mask`` (B, L, 1), float, 1 = real item) zeroes padded positions after each normalisation and
    each residual, so padded content never reaches a real position and padded outputs stay zero.

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

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.mlp_tokens((self.norm1(x) * mask).transpose(1, 2)).transpose(1, 2) * mask
        return x + self.mlp_channels(self.norm2(x)) * mask

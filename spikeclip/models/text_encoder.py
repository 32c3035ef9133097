"""SpikeCLIP's text encoder: the teacher's embeddings -> two spiking linear layers."""

from __future__ import annotations

import torch
from torch import nn

from spikeclip.models.config import SpikeCLIPConfig
from spikeclip.models.layers import TemporalReadout, make_neuron


class TextEncoder(nn.Module):
    """Token ids `[B, L]` (L = context_length) -> features `[B, embed_dim]` (not normalised).

    ids -> token + position embeddings `[B, L, W]` (the teacher's: `load_embeddings`) ->
    flattened `[B, L*W]` -> repeated over T `[T, B, L*W]` -> LIF -> Linear(L*W, text_hidden) ->
    LIF -> Linear(text_hidden, embed_dim) `[T, B, E]` -> TemporalReadout `[B, E]`.

    config.text_embeddings "trained" (SpikeCLIP's): the embeddings are trained with the rest,
    no normalisation; teacher embeddings are small (std ~0.02 in CLIP), so the first LIF is
    nearly silent at first and the surrogate gradient grows them. "frozen-layernorm" (ours):
    the embeddings stay frozen and a LayerNorm (learnable affine) over W comes after them: it
    exists for teachers whose embedding scale leaves the first LIF silent (the offline
    teacher's MiniLM embeddings: std 0.056, positions 0.025), which it fires at once without
    moving the teacher's embeddings, and it keeps the trainable parameters to the two layers.
    """

    def __init__(self, config: SpikeCLIPConfig, backend: str = "auto"):
        super().__init__()
        self.config = config
        L, W = config.context_length, config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, W)
        self.position_embedding = nn.Parameter(torch.randn(L, W) * 0.01)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        trained = config.text_embeddings == "trained"
        for p in (self.token_embedding.weight, self.position_embedding):
            p.requires_grad_(trained)
        self.norm = nn.Identity() if trained else nn.LayerNorm(W)
        v_th = config.text_v_th  # None: the image encoder's v_th
        self.input_neuron = make_neuron(config, spiking=True, v_th=v_th, backend=backend)
        self.fc1 = nn.Linear(L * W, config.text_hidden)
        self.hidden_neuron = make_neuron(config, spiking=True, v_th=v_th, backend=backend)
        self.fc2 = nn.Linear(config.text_hidden, config.embed_dim)
        self.readout = TemporalReadout(config.time_steps)

    @torch.no_grad()
    def load_embeddings(self, token: torch.Tensor, position: torch.Tensor) -> None:
        """Copy the teacher's token `[vocab_size, W]` and position `[>= L, W]` embeddings."""
        c = self.config
        if token.shape != (c.vocab_size, c.text_width):
            raise ValueError(
                f"token embeddings must be [{c.vocab_size}, {c.text_width}] "
                f"(vocab_size, text_width), got {tuple(token.shape)}"
            )
        if (
            position.dim() != 2
            or position.shape[0] < c.context_length
            or (position.shape[1] != c.text_width)
        ):
            raise ValueError(
                f"position embeddings must be [>= {c.context_length}, {c.text_width}], "
                f"got {tuple(position.shape)}"
            )
        self.token_embedding.weight.copy_(token)
        self.position_embedding.copy_(position[: c.context_length])

    def check_ids(self, ids) -> None:
        c = self.config
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("token ids must be an int64/int32 tensor [B, context_length]")
        if ids.dim() != 2 or ids.shape[1] != c.context_length or ids.shape[0] == 0:
            raise ValueError(
                f"token ids must be [B, {c.context_length}] with B >= 1, "
                f"got shape {tuple(ids.shape)}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {c.vocab_size}), got "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.check_ids(ids)
        x = self.norm(self.token_embedding(ids) + self.position_embedding)  # [B, L, W]
        x = x.flatten(1).unsqueeze(0).expand(self.config.time_steps, -1, -1)  # [T, B, L*W]
        x = self.fc1(self.input_neuron(x))
        x = self.fc2(self.hidden_neuron(x))  # [T, B, E]
        return self.readout(x)

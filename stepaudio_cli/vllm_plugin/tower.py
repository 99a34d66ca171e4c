"""The audio tower in plain PyTorch: Whisper-style encoder and adapter.

Replicated on every tensor-parallel rank (as vLLM's qwen2_audio does with its encoder);
no vLLM import, so it also runs (and is benchmarked) where vLLM is absent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stepaudio_cli.audio_tokens import adapter_frames


class EncoderAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = EncoderAttention(dim, heads)
        self.attn_ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.mlp_ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), bias)
        return x + self.mlp(self.mlp_ln(x))


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) True where the position is inside the item."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class AudioEncoder(nn.Module):
    """Mel (B, n_mels, T) -> (B, E, n_state) at 25 Hz, E = (T + 1) // 2 // 2."""

    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(n_ctx, n_state)
        self.blocks = nn.ModuleList(EncoderBlock(n_state, n_head) for _ in range(n_layer))
        self.avg_pooler = nn.AvgPool1d(2, stride=2)
        self.after_norm = nn.LayerNorm(n_state)

    def forward(self, mel: torch.Tensor, mel_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = mel.shape[-1]
        x = F.gelu(self.conv1(mel))
        # Zero the padding so a chunk's result does not depend on what it is batched with.
        x = x * length_mask(mel_lens, t)[:, None, :].to(x.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T2, C)
        t2 = x.shape[1]
        if t2 > self.positional_embedding.num_embeddings:
            raise ValueError(
                f"audio chunk too long for the encoder ({t2} > {self.positional_embedding.num_embeddings})"
            )
        x = x + self.positional_embedding.weight[:t2].to(x.dtype)
        lens2 = (mel_lens + 1) // 2
        bias = torch.zeros(x.shape[0], 1, 1, t2, dtype=x.dtype, device=x.device)
        bias.masked_fill_(~length_mask(lens2, t2)[:, None, None, :], torch.finfo(x.dtype).min)
        for block in self.blocks:
            x = block(x, bias)
        x = self.avg_pooler(x.transpose(1, 2)).transpose(1, 2)
        return self.after_norm(x), lens2 // 2


class Adapter(nn.Module):
    """(B, E, n_state) -> (B, (E - 1) // 2 + 1, llm_dim) at 12.5 Hz."""

    def __init__(self, n_state: int, llm_dim: int, kernel_size: int = 3, stride: int = 2, inner: int = 2048) -> None:
        super().__init__()
        self.conv = nn.Conv1d(n_state, n_state, kernel_size, stride, padding=(kernel_size - 1) // 2)
        self.linear1 = nn.Linear(n_state, inner)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(inner, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.linear2(self.relu(self.linear1(x)))


#: Chunks run through the tower at once. A 25 s chunk is 1,500 frames of 20-head attention;
#: 16 of them took 4.9 GiB at the real sizes in bf16 (benchmarks/tower_gpu.py, H100), and a
#: 20-minute item is 48 chunks: groups keep its peak memory that of one group.
TOWER_BATCH = 16


def encode_chunks(
    encoder: AudioEncoder, adapter: Adapter, features: torch.Tensor, chunk_lens: list[int], batch: int = TOWER_BATCH
) -> list[torch.Tensor]:
    """Mel frames of several chunks, concatenated as (sum T, n_mels), through encoder and
    adapter in padded batches of at most ``batch`` chunks; one (tokens, llm_dim) tensor per chunk."""
    chunks = torch.split(features, chunk_lens)
    out: list[torch.Tensor] = []
    for i in range(0, len(chunks), batch):
        out += _encode_batch(encoder, adapter, chunks[i : i + batch])
    return out


def _encode_batch(encoder: AudioEncoder, adapter: Adapter, chunks: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    param = encoder.conv1.weight
    lens = [c.shape[0] for c in chunks]
    mel = torch.zeros(len(chunks), chunks[0].shape[-1], max(lens), dtype=param.dtype, device=param.device)
    for i, c in enumerate(chunks):
        mel[i, :, : c.shape[0]] = c.T.to(param.dtype)
    x, enc_lens = encoder(mel, torch.tensor(lens, device=param.device))
    # Zero the padding before the adapter's conv reads across the chunk's end.
    x = x * length_mask(enc_lens, x.shape[1])[:, :, None].to(x.dtype)
    y = adapter(x)
    out_lens = [adapter_frames(int(n)) for n in enc_lens.tolist()]
    return [y[i, :n] for i, n in enumerate(out_lens)]

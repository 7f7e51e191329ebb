"""A tiny LLaMA-shaped decoder-only transformer and the engine-style post-processing it gets.

The checkpoint layout is the usual Hugging Face one: separate q_proj / k_proj / v_proj and
gate_proj / up_proj Linear layers, RMSNorms, and an LM head tied to the token embedding.
post_process() then fuses q/k/v into one qkv_proj and gate/up into one gate_up_proj, as vLLM's
QKVParallelLinear and MergedColumnParallelLinear do, so the model in memory no longer has the
checkpoint's layout. Only a model that went through the same post-processing can take ferry's
tensors: that is why targets post-process their dummy-initialized model before pulling.

Small on purpose (about 1.3 M parameters, 5 MiB in float32) so that the flow runs in seconds on
a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# What post_process() produces. Part of the identity's extra_parameters: a source and a target
# with different post-processing must not match (their tensors differ in name and shape).
LAYOUT = "fused-qkv+fused-gate-up.v1"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# The prompt every run generates from, so that outputs can be compared across processes.
PROMPT = "ferry moves model weights peer to peer"


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


CONFIG = Config()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, **factory):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


def _rotary(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of x [heads, seq, head_dim], computed on the fly (no buffer:
    a non-persistent buffer would be left uninitialized by a meta-device build)."""
    seq, dim = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


def _fuse(layers: List[nn.Linear]) -> nn.Linear:
    """One Linear whose output rows are the given layers' rows, in order."""
    w = layers[0].weight
    fused = nn.Linear(w.shape[1], sum(l.weight.shape[0] for l in layers), bias=False,
                      device=w.device, dtype=w.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([l.weight for l in layers], dim=0))
    return fused


class Attention(nn.Module):
    def __init__(self, config: Config, **factory):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.q_proj = nn.Linear(d, d, bias=False, **factory)
        self.k_proj = nn.Linear(d, d, bias=False, **factory)
        self.v_proj = nn.Linear(d, d, bias=False, **factory)
        self.o_proj = nn.Linear(d, d, bias=False, **factory)

    def fuse(self) -> None:
        self.qkv_proj = _fuse([self.q_proj, self.k_proj, self.v_proj])
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [seq, hidden]
        c = self.config
        if hasattr(self, "qkv_proj"):
            q, k, v = self.qkv_proj(x).split(c.hidden_size, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        seq = x.shape[0]
        q, k, v = (t.view(seq, c.num_heads, c.head_dim).transpose(0, 1) for t in (q, k, v))
        q, k = _rotary(q, c.rope_theta), _rotary(k, c.rope_theta)
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(c.head_dim)
        causal = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        probs = scores.masked_fill(causal, float("-inf")).softmax(-1).to(v.dtype)
        out = (probs @ v).transpose(0, 1).reshape(seq, c.hidden_size)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, config: Config, **factory):
        super().__init__()
        d, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, i, bias=False, **factory)
        self.up_proj = nn.Linear(d, i, bias=False, **factory)
        self.down_proj = nn.Linear(i, d, bias=False, **factory)

    def fuse(self) -> None:
        self.gate_up_proj = _fuse([self.gate_proj, self.up_proj])
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_up_proj"):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: Config, **factory):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **factory)
        self.self_attn = Attention(config, **factory)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps,
                                                **factory)
        self.mlp = MLP(config, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyLM(nn.Module):
    """Decoder-only LM. `device` and `dtype` go to every parameter (device="meta": no memory)."""

    def __init__(self, config: Config = CONFIG, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.config = config
        self.post_processed: Optional[str] = None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, **factory)
        self.layers = nn.ModuleList(Block(config, **factory) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **factory)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, **factory)
        self.tie_weights()

    def tie_weights(self) -> None:
        """lm_head shares the embedding's weight. Call again after to_empty() / skip_init(),
        which give each parameter its own memory and so untie them."""
        self.lm_head.weight = self.embed_tokens.weight

    def init_weights(self, std: float = 0.1) -> None:
        """Random weights (from torch's global generator: seed it for a reproducible model).
        A large std, so that greedy generation from random weights does not repeat one token."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name == "norm.weight":
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: [seq] -> logits [seq, vocab]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def post_process(model: TinyLM) -> TinyLM:
    """The engine's transformation after loading weights: fuses q/k/v into qkv_proj and
    gate/up into gate_up_proj, deleting the separate layers. Sources run it on the loaded model,
    targets on their dummy-initialized one, so that both have the same tensors."""
    if model.post_processed is not None:
        raise RuntimeError(f"model already post-processed ({model.post_processed})")
    for layer in model.layers:
        layer.self_attn.fuse()
        layer.mlp.fuse()
    model.post_processed = LAYOUT
    return model


def build_dummy(dtype: torch.dtype, config: Config = CONFIG) -> TinyLM:
    """The model with uninitialized weights, as an engine builds it before loading: on the meta
    device, then materialized on the CPU without initializing (no time spent on random init)."""
    model = torch.nn.utils.skip_init(TinyLM, config, dtype=dtype)
    model.tie_weights()
    return model.eval()


def load_checkpoint(path: str, dtype: torch.dtype, config: Config = CONFIG) -> TinyLM:
    """The slow path: build, load the checkpoint (checkpoint layout), post-process."""
    state = torch.load(path, map_location="cpu")
    model = build_dummy(dtype, config)
    model.load_state_dict(state)
    return post_process(model)


def prompt_ids(config: Config = CONFIG) -> torch.Tensor:
    return torch.tensor([b % config.vocab_size for b in PROMPT.encode()], dtype=torch.long)


@torch.no_grad()
def generate(model: TinyLM, new_tokens: int = 16) -> Tuple[List[int], str, float]:
    """Greedy generation from PROMPT: (generated token ids, output digest, seconds). The digest
    (16 hex characters) covers the prompt's logits and the generated tokens; one thread, so that
    two processes with the same weights get the same digest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.monotonic()
        ids = prompt_ids(model.config)
        logits = model(ids)
        digest = hashlib.sha256(logits.float().contiguous().numpy().tobytes())
        out: List[int] = []
        for _ in range(new_tokens):
            nxt = int(logits[-1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([nxt])])
            logits = model(ids)
        digest.update(repr(out).encode())
        return out, digest.hexdigest()[:16], time.monotonic() - start
    finally:
        torch.set_num_threads(threads)


def tensor_bytes(model: nn.Module) -> Dict[str, int]:
    """{"tensors": N, "bytes": B} of the state_dict (tied weights counted once per name)."""
    state = model.state_dict()
    return {"tensors": len(state),
            "bytes": sum(t.numel() * t.element_size() for t in state.values())}

"""A small decoder-only transformer built from torch.nn, for the ferry.torch tests."""

import torch
from torch import nn

VOCAB = 256


class TinyTransformer(nn.Module):
    def __init__(self, dim=64, layers=2, heads=4, ff=128, ff_overrides=None):
        super().__init__()
        ff_overrides = ff_overrides or {}
        self.embed = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, ff_overrides.get(i, ff), dropout=0.0,
                                       batch_first=True)
            for i in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        self.head.weight = self.embed.weight  # tied: one storage under two names
        self.register_buffer("position_scale", torch.ones(dim))

    def forward(self, tokens):
        x = self.embed(tokens) * self.position_scale
        mask = torch.triu(torch.full((tokens.shape[1], tokens.shape[1]), float("-inf")), 1)
        for layer in self.layers:
            x = layer(x, src_mask=mask)
        return self.head(self.norm(x))


def build(seed, **kwargs):
    torch.manual_seed(seed)
    model = TinyTransformer(**kwargs).eval()
    with torch.no_grad():
        model.position_scale.uniform_(0.5, 1.5)
    return model


def sample_input():
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, VOCAB, (2, 16), generator=g)


def distinct_storages(state_dict):
    """Number of distinct non-empty allocations behind a state_dict's tensors."""
    spans = set()
    for t in state_dict.values():
        if t.numel():
            s = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()
            spans.add(s.data_ptr())
    return len(spans)

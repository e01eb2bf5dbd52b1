"""Tiny random HF causal LMs built from configs (nothing is downloaded): Llama, Qwen2 and GPT-2."""
from __future__ import annotations

import torch

VOCAB = 211


def tiny_model(family: str, *, vocab: int = VOCAB, layers: int = 2, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **special)
        model = LlamaForCausalLM(config)
    elif family == "qwen2":
        config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **special)
        model = Qwen2ForCausalLM(config)
    elif family == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=layers, n_head=4, n_positions=256, **special)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(family)
    return model.eval()


def left_padded_prompts(batch: int = 3, length: int = 7, seed: int = 0, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row in range(batch):
        pad = row % 3  # rows of different lengths
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask

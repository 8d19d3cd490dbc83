"""Hugging Face ``transformers`` models under ``torch.compile(backend="purify")``.

    python examples/transformers_backend.py          (needs: pip install transformers)

Tiny configs, random weights, nothing downloaded.

1. Llama decoding with a ``StaticCache``: every decode step writes the cache in place
   (``index_copy_``) and bumps its length (``add_``). The purified graphs do the same writes as
   one write-back per cache tensor; the tokens and the cache must equal eager's.
2. GPT-2 training: three AdamW steps, eager vs compiled; losses and weights must agree.
"""
import copy
import glob
import json
import os
import tempfile
import warnings

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, StaticCache

warnings.filterwarnings("ignore", category=FutureWarning)
torch.manual_seed(0)


def show_reports(report_dir):
    paths = sorted(glob.glob(os.path.join(report_dir, "*.report.json")))
    print(f"{len(paths)} graph(s) purified (reports, before/after graphs in {report_dir}):")
    for path in paths:
        data = json.load(open(path))
        print(f"  {os.path.basename(path).split('.')[0]}: {data['nodes_in']} -> "
              f"{data['nodes_out']} nodes, {data['counts'] or 'no rewrites'}, "
              f"{data['bytes_copied']} bytes written back")
        for r in data["rewrites"][:4]:
            print(f"      {r['kind']:14s} {r['op']:28s} -> {r['replacement'][:34]:34s} "
                  f"{os.path.basename(r['source'].split(' in ')[0])}")
    return paths


# -------------------------------------------------------------------------------------------
print("=== 1. Llama decode steps, StaticCache written in place ===")
cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  attn_implementation="eager", bos_token_id=0, eos_token_id=0, pad_token_id=0)
llama = LlamaForCausalLM(cfg).eval()


def generate(forward, steps=4):
    cache = StaticCache(config=cfg, max_cache_len=16)
    prompt = torch.arange(1, 5).view(1, 4)
    tok = llama(input_ids=prompt, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    tokens = []
    for i in range(steps):
        logits = forward(input_ids=tok, cache=cache, cache_position=torch.tensor([4 + i]),
                         use_cache=True).logits
        tok = logits[:, -1:].argmax(-1)
        tokens.append(tok.item())
    return tokens, cache


report_dir = tempfile.mkdtemp(prefix="fxpurify-llama-")
with torch.no_grad():
    eager_tokens, eager_cache = generate(llama)
    compiled = torch.compile(llama, backend="purify", options={"report_dir": report_dir})
    purify_tokens, purify_cache = generate(compiled)
print(f"eager tokens:  {eager_tokens}\npurify tokens: {purify_tokens}")
assert purify_tokens == eager_tokens
for a, b in zip(eager_cache.layers, purify_cache.layers):
    torch.testing.assert_close(b.keys, a.keys)
    torch.testing.assert_close(b.values, a.values)
print("KV cache after decoding: identical to eager")
assert show_reports(report_dir)

# -------------------------------------------------------------------------------------------
print("\n=== 2. GPT-2 training steps ===")
config = GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                    attn_implementation="eager", use_cache=False, bos_token_id=0, eos_token_id=0,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # no dropout: no RNG
eager_model = GPT2LMHeadModel(config).train()
model = copy.deepcopy(eager_model)
ids = torch.randint(0, config.vocab_size, (2, 16))


def train(net, forward, steps=3):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


report_dir = tempfile.mkdtemp(prefix="fxpurify-gpt2-")
eager_losses = train(eager_model, eager_model)
purify_losses = train(model, torch.compile(model, backend="purify",
                                           options={"report_dir": report_dir}))
print("step  eager loss  purify loss")
for i, (a, b) in enumerate(zip(eager_losses, purify_losses)):
    print(f"{i:4d}  {a:10.5f}  {b:11.5f}")
torch.testing.assert_close(purify_losses, eager_losses, rtol=1e-4, atol=1e-5)
max_diff = max((p - q).abs().max().item()
               for p, q in zip(model.parameters(), eager_model.parameters()))
print(f"max |weight difference| after training: {max_diff:.2e}")
show_reports(report_dir)
print("OK: transformers models under backend='purify' match eager")

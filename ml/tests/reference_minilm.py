"""An independent reference for the embedder's test: all-MiniLM-L6-v2 written out in numpy (BERT
encoder, mean pooling over the attention mask, L2 normalisation), reading the same safetensors file.
It prints the cosine of each pair of the test's sentences; `tests/it/text.rs` pins them.

    python3 ml/tests/reference_minilm.py <models_dir>/all-minilm-l6-v2
"""
import json, math, struct, sys
import numpy as np
from tokenizers import Tokenizer

SENTENCES = [
    "The cat sits outside",
    "A man is playing guitar",
    "I love pasta",
    "The new movie is awesome",
    "The cat plays in the garden",
    "A woman watches TV",
    "The new movie is so great",
    "Do you like pizza?",
]

def load(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        if meta["dtype"] != "F32":
            continue
        out[name] = np.frombuffer(raw[base + start:base + end], dtype="<f4").reshape(meta["shape"])
    return out

def layer_norm(x, w, b, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b

def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))

def embed(w, ids, heads=12, layers=6):
    p = "" if "embeddings.word_embeddings.weight" in w else "bert."
    n = len(ids)
    x = w[p + "embeddings.word_embeddings.weight"][ids] + w[p + "embeddings.position_embeddings.weight"][:n] \
        + w[p + "embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w[p + "embeddings.LayerNorm.weight"], w[p + "embeddings.LayerNorm.bias"])
    d = x.shape[1] // heads
    for i in range(layers):
        q = f"{p}encoder.layer.{i}."
        lin = lambda h, name: h @ w[q + name + ".weight"].T + w[q + name + ".bias"]
        Q = lin(x, "attention.self.query").reshape(n, heads, d).transpose(1, 0, 2)
        K = lin(x, "attention.self.key").reshape(n, heads, d).transpose(1, 0, 2)
        V = lin(x, "attention.self.value").reshape(n, heads, d).transpose(1, 0, 2)
        s = Q @ K.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ V).transpose(1, 0, 2).reshape(n, -1)
        x = layer_norm(lin(a, "attention.output.dense") + x, w[q + "attention.output.LayerNorm.weight"], w[q + "attention.output.LayerNorm.bias"])
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(h, "output.dense") + x, w[q + "output.LayerNorm.weight"], w[q + "output.LayerNorm.bias"])
    v = x.mean(0)
    return v / np.linalg.norm(v)

def main():
    model = sys.argv[1]
    w = load(model + "/model.safetensors")
    tok = Tokenizer.from_file(model + "/tokenizer.json")
    tok.no_padding()
    vecs = [embed(w, tok.encode(s).ids) for s in SENTENCES]
    for i in range(len(vecs)):
        for j in range(i + 1, len(vecs)):
            print(f"({i}, {j}, {float(vecs[i] @ vecs[j]):.5f}),")

main()

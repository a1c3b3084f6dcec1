"""The text-embedding benchmark's peer: sentence-transformers (PyTorch on the CPU) embeds the same
texts as CloudSync, from the same model folder (which holds the model as sentence-transformers
publishes it: mean pooling over the attention mask, unit vectors, at most 256 tokens), in batches of
BATCH texts (default 32, the library's own) after sorting by length, as the library does.

    python sentence_transformers_embed.py MODEL_DIR TEXTS.json VECTORS.f32 THREADS [BATCH]

TEXTS.json is a JSON list of strings; the vectors are written as little-endian float32, one row per
text in the input's order. Prints one JSON line: the seconds the encoding took (the model's loading
and one warm-up batch are not counted) and the versions that ran.
"""

import json
import sys
import time

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    model_dir, texts_path, out_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    torch.set_num_threads(threads)
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    # The folder is the model as sentence-transformers publishes it (modules.json: the transformer
    # at 256 tokens, mean pooling, normalisation), so it loads as its users load it.
    model = SentenceTransformer(model_dir, device="cpu")
    model.encode(texts[:batch], batch_size=batch)
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch, convert_to_numpy=True)
    seconds = time.perf_counter() - started
    np.asarray(vectors, dtype="<f4").tofile(out_path)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "texts": len(texts),
                "torch": torch.__version__,
                "sentence_transformers": sentence_transformers.__version__,
                "threads": torch.get_num_threads(),
                "batch": batch,
                "max_seq_length": model.max_seq_length,
                "modules": [type(m).__name__ for m in model],
            }
        )
    )


if __name__ == "__main__":
    main()

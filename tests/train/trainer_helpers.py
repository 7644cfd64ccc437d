"""Shared helpers of the trainer tests: a tiny prepared corpus and tiny training configs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

TEXT = """\
The quick brown fox jumps over the lazy dog. A small model learns to read and to write.
When the night is long the stars are bright, and the river runs down to the sea.
She said that the king would come at dawn, and the people waited by the gate.
In the morning the birds sing in the trees, and the children play in the field.
Good words cost nothing, but they are worth much. The old man laughed and went home.
"""


def make_corpus(n_docs: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = TEXT.strip().splitlines()
    docs = []
    for _ in range(n_docs):
        k = rng.randint(3, 8)
        docs.append("\n".join(rng.choice(lines) for _ in range(k)))
    return docs


def make_data_dir(path: Path, vocab_size: int = 320, n_docs: int = 60) -> Path:
    """A prepared corpus (manifest, {split}.bin, tokenizer/) built with the data API."""
    from mossnet.data.token_store import FORMAT, token_dtype, write_manifest, write_tokens
    from mossnet.data.tokenizer import encode_documents, save_tokenizer, train_bpe_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    docs = make_corpus(n_docs)
    splits = {"train": docs[: n_docs * 3 // 4], "val": docs[n_docs * 3 // 4 : n_docs * 7 // 8],
              "test": docs[n_docs * 7 // 8 :]}
    tok = train_bpe_tokenizer(splits["train"], vocab_size)
    save_tokenizer(tok, path)
    dtype = token_dtype(len(tok))
    entries = {}
    for split, texts in splits.items():
        n, sha = write_tokens(path / f"{split}.bin", encode_documents(tok, texts, progress=False), dtype)
        entries[split] = {"file": f"{split}.bin", "tokens": n, "sha256": sha, "documents": len(texts),
                          "bytes": sum(len(t.encode()) for t in texts)}
    write_manifest(path, {"format": FORMAT, "corpus": "test", "tokenizer": "bpe", "vocab_size": len(tok),
                          "eos_id": tok.eos_token_id, "dtype": np.dtype(dtype).name, "splits": entries})
    return path


TINY_MODEL = {"d_model": 32, "n_layers": 2, "ssm_experts": 2, "ssm_top_k": 1, "ssm_head_dim": 16,
              "ssm_state_dim": 8, "mlp_experts": 2, "mlp_top_k": 1, "mlp_hidden_dim": 64, "chunk_size": 16}


def tiny_config(data: Path, out: Path, **kw):
    """A TrainConfig that trains in well under a second per step on a 2-core CPU."""
    from mossnet.train.config import build_config

    flags = dict(data=str(data), out=str(out), seq_len=32, batch_size=4, max_steps=4, lr=3e-3, warmup_steps=2,
                 log_interval=1, eval_interval=0, eval_tokens=256, ckpt_interval=0, sample_tokens=0,
                 progress=False, tensorboard=False, plot=False, seed=0, num_threads=1)
    model = dict(TINY_MODEL)
    model.update(kw.pop("model", {}))
    flags.update(kw)
    cfg = build_config(preset="tiny", flags=flags)
    cfg.model = model
    return cfg

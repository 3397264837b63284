"""Text encoders of SAIL and its peers on tiny local models that carry their own modelling code:
GTE-like (custom code, CLS pooling, max length), a forward returning a dict, an NV-Embed-style
``encode(texts, instruction, max_length)``, last-token pooling under padding, prompts, the
known-model table, code in another Hub repo, and the offline failures. Nothing is downloaded:
every test runs with the Hub marked offline and an empty (or hand-built) Hub cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from vlalign.backbones import create_text_encoder
from vlalign.backbones import hf as hf_adapter
from vlalign.backbones.text_recipes import pool_tokens
from vlalign.errors import UserError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "bridge",
         "diagram", "red", "the", "over", "instruct", "query", "retrieve", "captions", ":"]
TEXTS = ["a photo of a red cat", "dog", "a diagram of the bridge over the red dog"]
LONG = "a photo of a red cat over the bridge"  # 9 tokens + [CLS] + [SEP]

CONFIG_CODE = '''
from transformers import PretrainedConfig


class TinyEncConfig(PretrainedConfig):
    model_type = "tinyenc"

    def __init__(self, vocab_size=20, hidden_size=8, max_position_embeddings=64, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)
'''

MODELING_CODE = '''
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_tinyenc import TinyEncConfig


class TinyEncBase(PreTrainedModel):
    config_class = TinyEncConfig
    base_model_prefix = "tinyenc"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.mix = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.score = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def states(self, input_ids, attention_mask):
        x = self.embed(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        context = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
        return torch.tanh(self.mix(torch.cat([x, context.expand_as(x)], -1)))


class TinyEncModel(TinyEncBase):
    """GTE-like: a ModelOutput holding the last hidden state."""

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, return_dict=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return BaseModelOutput(last_hidden_state=self.states(input_ids, attention_mask))


class TinyDictModel(TinyEncBase):
    """A forward that returns a plain dict with pooled vectors only (masked max)."""

    def forward(self, input_ids, attention_mask):
        h = self.states(input_ids, attention_mask)
        h = h.masked_fill(attention_mask.unsqueeze(-1) == 0, -10.0)
        return {"sentence_embeddings": h.amax(1)}


class TinyEmbedModel(TinyEncBase):
    """NV-Embed style: forward(input_ids, attention_mask, pool_mask) -> dict, attention pooling
    that leaves the instruction out, and its own encode(prompts, instruction, max_length)."""

    def forward(self, input_ids, attention_mask, pool_mask=None, return_dict=True):
        h = self.states(input_ids, attention_mask)
        mask = attention_mask if pool_mask is None else pool_mask
        scores = self.score(h).squeeze(-1).masked_fill(mask == 0, -1e4)
        return {"sentence_embeddings": (scores.softmax(-1).unsqueeze(-1) * h).sum(1)}

    @torch.no_grad()
    def encode(self, prompts, instruction="", max_length=4096, **kwargs):
        tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        batch = tokenizer([instruction + p for p in prompts], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        pool_mask = batch["attention_mask"].clone()
        if instruction:
            pool_mask[:, 1:1 + len(tokenizer.tokenize(instruction))] = 0
        out = self(batch["input_ids"], batch["attention_mask"], pool_mask)
        return out["sentence_embeddings"]
'''

ST_MODULES = [  # the layout of GTE-en-v1.5's Hub folder (sentence-transformers 2.x names)
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
ST_CLS_POOLING = {"word_embedding_dimension": 8, "pooling_mode_cls_token": True,
                  "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
                  "pooling_mode_mean_sqrt_len_tokens": False}


def _tokenizer(padding_side: str = "right"):
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, padding_side=padding_side)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def write_custom_model(folder: Path, cls: str, code_repo: str | None = None, seed: int = 0,
                       sentence_transformers: bool = False) -> Path:
    """A folder with config.json (auto_map), its own configuration/modeling files (or, with
    ``code_repo``, auto_map references ``code_repo--module.Class`` to code kept elsewhere), a
    tiny BERT tokenizer and random weights; optionally the sentence-transformers files of GTE."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    if code_repo is None:
        (folder / "configuration_tinyenc.py").write_text(CONFIG_CODE)
        (folder / "modeling_tinyenc.py").write_text(MODELING_CODE)
    where = f"{code_repo}--" if code_repo else ""
    _write_json(folder / "config.json", {
        "model_type": "tinyenc", "architectures": [cls], "vocab_size": len(WORDS),
        "hidden_size": 8, "max_position_embeddings": 64,
        "auto_map": {"AutoConfig": f"{where}configuration_tinyenc.TinyEncConfig",
                     "AutoModel": f"{where}modeling_tinyenc.{cls}"}})
    g = torch.Generator().manual_seed(seed)
    weights = {"embed.weight": torch.randn(len(WORDS), 8, generator=g),
               "pos.weight": torch.randn(64, 8, generator=g) * 0.1,
               "mix.weight": torch.randn(8, 16, generator=g) * 0.5,
               "mix.bias": torch.randn(8, generator=g) * 0.1,
               "score.weight": torch.randn(1, 8, generator=g), "score.bias": torch.zeros(1)}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _tokenizer().save_pretrained(folder)
    if sentence_transformers:
        _write_json(folder / "modules.json", ST_MODULES)
        _write_json(folder / "1_Pooling" / "config.json", ST_CLS_POOLING)
        _write_json(folder / "sentence_bert_config.json", {"max_seq_length": 8,
                                                           "do_lower_case": False})
    return folder


def write_code_repo(cache: Path, repo: str) -> None:
    """A Hub-cache snapshot of a code-only repo (configuration + modeling files)."""
    folder = cached_snapshot(cache, repo)
    (folder / "configuration_tinyenc.py").write_text(CONFIG_CODE)
    (folder / "modeling_tinyenc.py").write_text(MODELING_CODE)


def cached_snapshot(cache: Path, repo: str, commit: str = "0" * 40) -> Path:
    """The snapshot folder of ``repo`` in a Hub cache laid out as huggingface_hub leaves it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    return root / "snapshots" / commit


def _direct(folder: Path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The Hub offline (HF_HUB_OFFLINE=1) and an empty Hub cache, for every test."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("text-encoders")
    paths = {"gte": write_custom_model(root / "tinygte", "TinyEncModel",
                                       sentence_transformers=True),
             "dict": write_custom_model(root / "tinydict", "TinyDictModel", seed=1),
             "embed": write_custom_model(root / "tinyembed", "TinyEmbedModel", seed=2)}
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, vocab_size=len(WORDS),
                                max_position_embeddings=32))
    for side in ("right", "left"):
        paths[f"bert-{side}"] = root / f"bert-{side}"
        bert.save_pretrained(paths[f"bert-{side}"])
        _tokenizer(side).save_pretrained(paths[f"bert-{side}"])
    _write_json(paths["bert-right"] / "config_sentence_transformers.json",
                {"prompts": {"query": "retrieve captions : ", "document": ""}})
    return paths


# --- (a) GTE-like: custom code in the folder, CLS pooling, max length -----------------------------

def test_gte_like_custom_code_cls_pooling_and_max_length(models: dict[str, Path]) -> None:
    folder = models["gte"]
    with pytest.raises(UserError, match="remote_code=1") as excinfo:
        create_text_encoder(f"hf:{folder}")
    _one_line_error(excinfo)
    enc = create_text_encoder(f"hf:{folder}?remote_code=1")
    # auto follows 1_Pooling/config.json (CLS) and sentence_bert_config.json (8 tokens)
    assert (enc.pool, enc.max_length, enc.dim) == ("cls", 8, 8)
    assert "pool=cls" in enc.identity and "remote_code=1" in enc.identity
    model, tok = _direct(folder)
    texts = TEXTS + [LONG]
    with torch.no_grad():
        for max_length in (8, 4):
            batch = tok(texts, padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
            expected = model(**batch).last_hidden_state[:, 0]
            spec = f"hf:{folder}?remote_code=1&max_length={max_length}"
            torch.testing.assert_close(create_text_encoder(spec).encode(texts), expected)
    out8 = enc.encode(texts)
    out4 = create_text_encoder(f"hf:{folder}?remote_code=1&max_length=4").encode(texts)
    torch.testing.assert_close(out4[1], out8[1])  # "dog" is 3 tokens: not truncated
    assert not torch.allclose(out4[3], out8[3])  # the long caption is
    mean = create_text_encoder(f"hf:{folder}?remote_code=1&pool=mean").encode(texts)
    assert not torch.allclose(mean, out8)


def test_gte_like_through_sentence_transformers(models: dict[str, Path]) -> None:
    """st: passes trust_remote_code; the pipeline's CLS pooling and 8 tokens give hf:'s result."""
    folder = models["gte"]
    st = create_text_encoder(f"st:{folder}?remote_code=1")
    hf = create_text_encoder(f"hf:{folder}?remote_code=1")
    texts = TEXTS + [LONG]
    torch.testing.assert_close(st.encode(texts), hf.encode(texts))
    st4 = create_text_encoder(f"st:{folder}?remote_code=1&max_length=4")
    torch.testing.assert_close(
        st4.encode(texts), create_text_encoder(f"hf:{folder}?remote_code=1&max_length=4"
                                               ).encode(texts))
    with pytest.raises(UserError, match="remote_code=1") as excinfo:
        create_text_encoder(f"st:{folder}")
    _one_line_error(excinfo)


# --- (b) a forward that returns a dict ----------------------------------------------------------

def test_forward_returning_a_dict(models: dict[str, Path]) -> None:
    folder = models["dict"]
    enc = create_text_encoder(f"hf:{folder}?remote_code=1")
    assert enc.pool == "model" and enc.dim == 8
    model, tok = _direct(folder)
    with torch.no_grad():
        batch = tok(TEXTS, padding=True, return_tensors="pt")
        expected = model(batch["input_ids"], batch["attention_mask"])["sentence_embeddings"]
    torch.testing.assert_close(enc.encode(TEXTS), expected)
    with pytest.raises(UserError, match="last_hidden_state.*pool=model") as excinfo:
        create_text_encoder(f"hf:{folder}?remote_code=1&pool=mean")
    assert "sentence_embeddings" in _one_line_error(excinfo)
    with pytest.raises(UserError, match="encode"):
        create_text_encoder(f"hf:{folder}?remote_code=1&pool=encode")


# --- (c) NV-Embed style: the model's own encode ---------------------------------------------------

def test_own_encode_with_instruction_and_max_length(models: dict[str, Path]) -> None:
    folder = models["embed"]
    enc = create_text_encoder(f"hf:{folder}?remote_code=1")
    assert enc.pool == "encode" and enc.tokenizer is None and enc.dim == 8
    model, _ = _direct(folder)
    torch.testing.assert_close(enc.encode(TEXTS), model.encode(TEXTS))
    task = "retrieve captions"
    spec = f"hf:{folder}?remote_code=1&instruction=retrieve%20captions&max_length=12"
    instructed = create_text_encoder(spec)
    expected = model.encode(TEXTS, instruction=f"Instruct: {task}\nQuery: ", max_length=12)
    torch.testing.assert_close(instructed.encode(TEXTS), expected)
    assert not torch.allclose(instructed.encode(TEXTS), enc.encode(TEXTS))
    # the instruction goes to encode (which keeps it out of the pooling), not before the texts
    prefixed = model.encode([f"Instruct: {task}\nQuery: {t}" for t in TEXTS], max_length=12)
    assert not torch.allclose(instructed.encode(TEXTS), prefixed)
    assert instructed.identity != enc.identity and "max_length=12" in instructed.identity
    # batching does not change what encode gives
    small = create_text_encoder(spec + "&batch_size=1")
    torch.testing.assert_close(small.encode(TEXTS), expected)


# --- (d) last-token pooling under padding --------------------------------------------------------

@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_pooling_under_padding(models: dict[str, Path], side: str) -> None:
    from transformers import AutoTokenizer, BertModel

    folder = models[f"bert-{side}"]
    enc = create_text_encoder(f"hf:{folder}?pool=last")
    cls = create_text_encoder(f"hf:{folder}?pool=cls")
    model = BertModel.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.padding_side == side
    with torch.no_grad():
        batch = tok(TEXTS, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
    lengths = batch["attention_mask"].sum(1).tolist()
    width = hidden.shape[1]
    assert min(lengths) < width  # the batch is padded
    if side == "right":
        last = [hidden[i, n - 1] for i, n in enumerate(lengths)]
        first = [hidden[i, 0] for i in range(len(TEXTS))]
    else:
        last = [hidden[i, width - 1] for i in range(len(TEXTS))]
        first = [hidden[i, width - n] for i, n in enumerate(lengths)]
    torch.testing.assert_close(enc.encode(TEXTS), torch.stack(last))
    torch.testing.assert_close(cls.encode(TEXTS), torch.stack(first))  # first real token: [CLS]
    if side == "right":  # right padding leaves each text's states as they are alone
        alone = torch.cat([enc.encode([t]) for t in TEXTS])
        torch.testing.assert_close(enc.encode(TEXTS), alone, atol=1e-5, rtol=1e-5)


def test_pool_tokens_by_hand() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_tokens(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool_tokens(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool_tokens(hidden, left, "cls").flatten().tolist() == [2.0, 4.0]
    assert pool_tokens(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


# --- (e) prompts -------------------------------------------------------------------------------

def test_prompt_instruction_and_prompt_name(models: dict[str, Path]) -> None:
    folder = models["bert-right"]
    plain = create_text_encoder(f"hf:{folder}")
    assert plain.pool == "mean"
    texts = ["cat", "the red dog"]
    prompted = create_text_encoder(f"hf:{folder}?prompt=a%20photo%20of%20")
    torch.testing.assert_close(prompted.encode(texts),
                               plain.encode([f"a photo of {t}" for t in texts]))
    assert prompted.identity != plain.identity
    instruction = create_text_encoder(f"hf:{folder}?instruction=retrieve%20captions")
    assert instruction.prefix == "Instruct: retrieve captions\nQuery: "
    torch.testing.assert_close(
        instruction.encode(texts),
        plain.encode([f"Instruct: retrieve captions\nQuery: {t}" for t in texts]))
    escaped = "Instruct%3A%20retrieve%20captions%0AQuery%3A%20"
    same = create_text_encoder(f"hf:{folder}?prompt={escaped}")
    assert same.identity == instruction.identity
    named = create_text_encoder(f"hf:{folder}?prompt_name=query")
    torch.testing.assert_close(named.encode(texts),
                               plain.encode([f"retrieve captions : {t}" for t in texts]))
    with pytest.raises(UserError, match="document, query"):
        create_text_encoder(f"hf:{folder}?prompt_name=passage")
    with pytest.raises(UserError, match="give one of"):
        create_text_encoder(f"hf:{folder}?prompt=a&instruction=b")


def test_sentence_transformers_prompts(models: dict[str, Path], tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    transformer = st_models.Transformer(str(models["bert-right"]))
    pooling = st_models.Pooling(transformer.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling],
                        prompts={"query": "a photo of "}).save(str(tmp_path / "st"))
    plain = create_text_encoder(f"st:{tmp_path / 'st'}")
    texts = ["cat", "the red dog"]
    named = create_text_encoder(f"st:{tmp_path / 'st'}?prompt_name=query")
    torch.testing.assert_close(named.encode(texts),
                               plain.encode([f"a photo of {t}" for t in texts]))
    instructed = create_text_encoder(f"st:{tmp_path / 'st'}?instruction=retrieve%20captions")
    torch.testing.assert_close(
        instructed.encode(texts),
        plain.encode([f"Instruct: retrieve captions\nQuery: {t}" for t in texts]))
    assert len({plain.identity, named.identity, instructed.identity}) == 3
    with pytest.raises(UserError, match="query"):
        create_text_encoder(f"st:{tmp_path / 'st'}?prompt_name=passage")


# --- (f) Hub names: the known-model table, code in another repo, offline failures ----------------

@pytest.mark.parametrize("scheme", ["hf", "st"])
def test_offline_hub_name_with_remote_code_fails_fast(scheme: str) -> None:
    name = "Alibaba-NLP/gte-large-en-v1.5"
    start = time.perf_counter()
    with pytest.raises(UserError, match="unreachable") as excinfo:
        create_text_encoder(f"{scheme}:{name}?remote_code=1")
    assert time.perf_counter() - start < 5
    assert name in _one_line_error(excinfo)


def test_known_model_with_code_in_another_repo(offline_hub: Path) -> None:
    """A cached GTE whose auto_map points at another repo: offline, a one-line error naming both
    until that repo's code is cached too; then the table's defaults (remote code, CLS, 1024
    tokens capped at the position limit) apply without any option."""
    name, code_repo = "Alibaba-NLP/gte-large-en-v1.5", "vlalign-test/tiny-impl"
    snapshot = cached_snapshot(offline_hub, name)
    snapshot.rmdir()
    write_custom_model(snapshot, "TinyEncModel", code_repo=code_repo)
    assert hf_adapter.external_code_refs(snapshot) == {
        code_repo: {"configuration_tinyenc.py", "modeling_tinyenc.py"}}
    for scheme in ("hf", "st"):
        start = time.perf_counter()
        with pytest.raises(UserError, match="unreachable") as excinfo:
            create_text_encoder(f"{scheme}:{name}")
        assert time.perf_counter() - start < 5
        message = _one_line_error(excinfo)
        assert name in message and code_repo in message
    write_code_repo(offline_hub, code_repo)
    enc = create_text_encoder(f"hf:{name}")
    assert (enc.pool, enc.max_length) == ("cls", 64)
    assert "remote_code=1" in enc.identity
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(snapshot), trust_remote_code=True,
                                      local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(snapshot))
    with torch.no_grad():
        expected = model(**tok(TEXTS, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    torch.testing.assert_close(enc.encode(TEXTS), expected)
    # spec options override the table
    mean = create_text_encoder(f"hf:{name}?pool=mean&max_length=4")
    assert (mean.pool, mean.max_length) == ("mean", 4)
    with pytest.raises(UserError, match="remote_code=1"):
        create_text_encoder(f"hf:{name}?remote_code=0")


def test_known_model_by_local_folder_name(tmp_path: Path) -> None:
    """A local copy named like the repo (``--local-dir gte-large-en-v1.5``) gets the table's
    defaults too: its own code runs without remote_code=1, CLS pooling, 1024 capped at 64."""
    folder = write_custom_model(tmp_path / "gte-large-en-v1.5", "TinyEncModel")
    enc = create_text_encoder(f"hf:{folder}")
    assert (enc.pool, enc.max_length) == ("cls", 64) and "remote_code=1" in enc.identity
    other = write_custom_model(tmp_path / "my-encoder", "TinyEncModel")
    with pytest.raises(UserError, match="remote_code=1"):
        create_text_encoder(f"hf:{other}")


def test_unsupported_sentence_transformers_pooling_is_one_line(models: dict[str, Path],
                                                               tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "maxpool"
    shutil.copytree(models["gte"], folder)
    _write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": 8,
                                                       "pooling_mode_max_tokens": True})
    with pytest.raises(UserError, match="'max'.*use st:") as excinfo:
        create_text_encoder(f"hf:{folder}?remote_code=1")
    _one_line_error(excinfo)
    assert create_text_encoder(f"hf:{folder}?remote_code=1&pool=last").pool == "last"

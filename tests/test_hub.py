"""Sharing models through the Hugging Face Hub: the upload folder and its model card, the upload
calls up to the network boundary, and ``resolve_hub_model`` on an offline Hub cache (never the
network: the Hub API is replaced by recorders, the cache is a folder laid out as the Hub's)."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, constants
from PIL import Image

from harness import encode, train_config
from vlalign.cli import main
from vlalign.errors import UserError
from vlalign.models import load_model
from vlalign.models.hub import (
    backbone_source,
    cache_snapshot,
    maybe_push,
    prepare_upload,
    resolve_hub_model,
)
from vlalign.sail.train import train_sail

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def sail_run(tmp_path_factory, one_thread) -> Path:
    """A tiny trained SAIL run (raw-pixel vision, bag-of-words text; a few steps)."""
    root = tmp_path_factory.mktemp("hub")
    encode(root / "store", "digits:train[:80]")
    train_sail(train_config(root / "store", epochs=2), root / "run", progress=False)
    return root / "run"


def front_matter(card: str) -> dict:
    """The YAML between the card's leading ``---`` lines."""
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def hub_cache(cache: Path, repo: str, files: Path, revision: str = REV) -> Path:
    """Lay ``files`` out as the Hub cache does (blobs, snapshot symlinks, refs/main); returns
    the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        blob = root / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache with the Hub switched off (env and huggingface_hub's constants)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (20, 16), (30 * i, 200 - 40 * i, 90)) for i in range(4)]


def _results(run: Path, path: Path) -> Path:
    """A suite's results.json: this run's records and another model's."""
    records = [
        {"dataset": "digits:test", "model": "tiny", "pretrained": str(run),
         "task": "zeroshot_classification", "language": "en",
         "metrics": {"acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.45, "skipped": 0,
                     "recall/zero": 0.4}},
        {"dataset": "emoji:test", "model": "tiny", "pretrained": str(run),
         "task": "zeroshot_retrieval",
         "metrics": {"image_retrieval_recall@5": 0.25, "text_retrieval_recall@5": 0.5}},
        {"dataset": "digits:test", "model": "other", "pretrained": "runs/other",
         "task": "zeroshot_classification", "metrics": {"acc1": 0.1}},
        {"note": "not a record"},
    ]
    path.write_text(json.dumps(records))
    return path


def test_upload_folder_holds_the_model_files_and_a_card(sail_run, tmp_path):
    results = _results(sail_run, tmp_path / "results.json")
    folder = prepare_upload(sail_run, tmp_path / "up", "org/tiny-sail", results=results,
                            license="apache-2.0")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "heads.json",
                                                        "heads.safetensors"]
    assert (folder / "heads.safetensors").read_bytes() == (
        sail_run / "heads.safetensors").read_bytes()
    assert json.loads((folder / "heads.json").read_text()) == json.loads(
        (sail_run / "heads.json").read_text())  # bundled backbones: nothing to rewrite
    meta = front_matter((folder / "README.md").read_text())
    assert meta["library_name"] == "vlalign" and meta["license"] == "apache-2.0"
    assert {"vlalign", "sail"} <= set(meta["tags"])
    assert "base_model" not in meta  # bundled encoders are not Hub models
    assert [b["spec"] for b in meta["vlalign"]["backbones"]] == [
        "bundled:pixels?size=8&patch=4", "bundled:bow?dim=64"]
    (index,) = meta["model-index"]
    assert index["name"] == "tiny-sail"
    tasks = [(r["task"]["type"], r["dataset"]["name"]) for r in index["results"]]
    assert tasks == [("zero-shot-image-classification", "digits:test"),
                     ("zero-shot-retrieval", "emoji:test")]  # the other model's record left out
    metrics = {m["type"]: m["value"] for m in index["results"][0]["metrics"]}
    assert metrics == {"acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.45}
    assert index["results"][0]["dataset"]["split"] == "test"
    with pytest.raises(UserError, match="not empty"):
        prepare_upload(sail_run, folder, "org/tiny-sail")


def test_hub_cache_backbones_become_repo_at_revision(sail_run, tmp_path, offline_cache):
    """A spec into the Hub cache is uploaded as hf:ORG/NAME (identity too) and carded as
    ORG/NAME@REV; a plain local folder stays a path with a warning."""
    snapshot = hub_cache(offline_cache, "org/vision-net", _write(tmp_path / "v", "config.json"))
    assert cache_snapshot(snapshot) == ("org/vision-net", REV)
    assert cache_snapshot(tmp_path) is None
    source = backbone_source("vision", f"hf:{snapshot}?pool=cls")
    assert (source.hub_spec, source.repo, source.revision) == (
        "hf:org/vision-net?pool=cls", "org/vision-net", REV)
    assert backbone_source("text", "st:org/vision-net").revision == REV  # cached refs/main
    local = _write(tmp_path / "my-encoder", "config.json")
    assert not backbone_source("text", f"st:{local}").fetchable

    model = tmp_path / "model"
    shutil.copytree(sail_run, model, ignore=shutil.ignore_patterns("ckpt-*", "*.jsonl"))
    config = json.loads((model / "heads.json").read_text())
    config["vision"] |= {"spec": f"hf:{snapshot}?pool=cls",
                         "identity": f"hf:{snapshot}?pool=cls#sha256:aaaaaaaaaaaa"}
    config["text"] |= {"spec": f"st:{local}", "identity": f"st:{local}#sha256:bbbbbbbbbbbb"}
    (model / "heads.json").write_text(json.dumps(config))
    folder = prepare_upload(model, tmp_path / "up", "org/tiny-sail")
    uploaded = json.loads((folder / "heads.json").read_text())
    assert uploaded["vision"]["spec"] == "hf:org/vision-net?pool=cls"
    assert uploaded["vision"]["identity"] == "hf:org/vision-net?pool=cls#sha256:aaaaaaaaaaaa"
    assert uploaded["text"] == config["text"]
    card = (folder / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == ["org/vision-net"]
    assert "model-index" not in meta  # no results in this folder
    vision = meta["vlalign"]["backbones"][0]
    assert (vision["repo"], vision["revision"]) == ("org/vision-net", REV)
    assert f"org/vision-net@{REV}" in card
    assert f"> **Warning**: the text backbone `st:{local}` is a local folder" in card


def _write(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("{}")
    return folder


def test_push_goes_through_the_hub_api(sail_run, monkeypatch, capsys, tmp_path):
    calls: dict[str, dict] = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        calls["create_branch"] = {"repo_id": repo_id, **kwargs}

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        calls["upload_folder"] = {**kwargs, "files": sorted(p.name for p in folder.iterdir()),
                                  "card": (folder / "README.md").read_text()}
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/{REV}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    results = _results(sail_run, tmp_path / "results.json")
    assert main(["push", str(sail_run), "org/tiny-sail", "--revision", "v1", "--private",
                 "--results", str(results)]) == 0
    assert calls["create_repo"] == {"repo_id": "org/tiny-sail", "private": True,
                                    "exist_ok": True}
    assert calls["create_branch"] == {"repo_id": "org/tiny-sail", "branch": "v1",
                                      "exist_ok": True}
    upload = calls["upload_folder"]
    assert (upload["repo_id"], upload["revision"]) == ("org/tiny-sail", "v1")
    assert upload["files"] == ["README.md", "heads.json", "heads.safetensors"]
    assert "model-index" in front_matter(upload["card"])
    assert not Path(upload["folder_path"]).exists()  # the temporary upload folder is gone
    assert f"/commit/{REV}" in capsys.readouterr().out

    # the save_pretrained hook: the folder's name is the default repo id
    assert maybe_push(sail_run, push_to_hub=True).endswith(f"{sail_run.name}/commit/{REV}")
    assert calls["upload_folder"]["revision"] is None and maybe_push(sail_run) is None

    def refused(self, repo_id, **kwargs):
        raise OSError("401 Client Error: Unauthorized\nfor url: https://huggingface.co/api")

    monkeypatch.setattr(HfApi, "create_repo", refused)
    assert main(["push", str(sail_run), "org/tiny-sail"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vlalign: error: pushing ") and "401" in err


def test_push_refuses_non_models_and_bad_repo_ids(sail_run, tmp_path, capsys):
    assert main(["push", str(tmp_path), "org/x", "--out", str(tmp_path / "up")]) == 2
    assert "is not a vlalign model" in capsys.readouterr().err
    assert main(["push", str(sail_run), "not a repo", "--out", str(tmp_path / "up")]) == 2
    assert "bad Hub repo id" in capsys.readouterr().err


def test_resolve_hub_model_from_the_offline_cache(sail_run, tmp_path, offline_cache):
    folder = prepare_upload(sail_run, tmp_path / "up", "org/tiny-sail")
    snapshot = hub_cache(offline_cache, "org/tiny-sail", folder)
    assert resolve_hub_model("hf-hub:org/tiny-sail") == snapshot
    assert resolve_hub_model(f"hf-hub:org/tiny-sail@{REV}") == snapshot
    shared, trained = load_model("hf-hub:org/tiny-sail"), load_model(sail_run)  # via resolve
    torch.testing.assert_close(shared.encode_image(_images()), trained.encode_image(_images()))
    texts = ["a seven", "the digit zero"]
    torch.testing.assert_close(shared.encode_text(texts), trained.encode_text(texts))


@pytest.mark.parametrize(("name", "message"), [
    ("hf-hub:org/nope", "Hub model 'org/nope' is not in the local Hub cache"),
    ("hf-hub:org/tiny-sail@v9", "Hub model 'org/tiny-sail@v9' is not in the local Hub cache"),
    ("hf-hub:org/empty", "Hub repo 'org/empty' is not a vlalign model"),
    ("hf-hub:not a repo", "bad Hub model name"),
])
def test_unknown_hub_models_fail_offline_in_one_line(name, message, tmp_path, offline_cache):
    hub_cache(offline_cache, "org/tiny-sail", _write(tmp_path / "m", "heads.json"))
    hub_cache(offline_cache, "org/empty", _write(tmp_path / "e", "config.json"))
    with pytest.raises(UserError) as caught:
        resolve_hub_model(name)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_pushed_hub_backbone_loads_from_the_cache(tmp_path, offline_cache):
    """End to end: a model on a backbone in the Hub cache, uploaded as hf:ORG/NAME, loads from
    the cache with the trained identity and the same embeddings."""
    from tiny_models import save_tiny_dinov2
    from vlalign.backbones import create_text_encoder, create_vision_encoder
    from vlalign.models import VLModel
    from vlalign.sail.artifact import AlignmentHeads, BackboneRecord, HeadsConfig
    from vlalign.sail.heads import create_head

    snapshot = hub_cache(offline_cache, "org/tiny-dinov2", save_tiny_dinov2(tmp_path / "dino"))
    specs = (f"hf:{snapshot}", "bundled:bow?dim=32")
    vision, text = create_vision_encoder(specs[0]), create_text_encoder(specs[1])
    torch.manual_seed(0)
    vision_head = create_head("linear", vision.dim, 8)
    text_head = create_head("linear", text.dim, 8)
    config = HeadsConfig(vision_head=vision_head.config, text_head=text_head.config,
                         vision=BackboneRecord(specs[0], vision.identity, vision.dim),
                         text=BackboneRecord(specs[1], text.identity, text.dim), embed_dim=8)
    model = VLModel(vision, text, AlignmentHeads(vision_head, text_head, config))
    model.save_pretrained(tmp_path / "model")
    folder = prepare_upload(tmp_path / "model", tmp_path / "up", "org/tiny-sail")
    assert json.loads((folder / "heads.json").read_text())["vision"]["spec"] == (
        "hf:org/tiny-dinov2")
    assert front_matter((folder / "README.md").read_text())["base_model"] == ["org/tiny-dinov2"]
    shared = load_model(folder)
    assert shared.vision.identity.startswith("hf:org/tiny-dinov2?")
    images = [image.resize((28, 28)) for image in _images()]
    torch.testing.assert_close(shared.encode_image(images), model.encode_image(images))

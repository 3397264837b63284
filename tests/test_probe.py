"""Alignment probing on tiny encoders built to be perfectly alignable, partly alignable and
unalignable; the statistics, store composition, report and CLI around it."""

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats as scipy_stats

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.cli import main
from vlalign.config import load_config
from vlalign.data import create_source
from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.errors import StoreError
from vlalign.probe import stats
from vlalign.probe.config import ProbeConfig, linear_probe_recipe
from vlalign.probe.run import StoreFinder, caption_kinds
from vlalign.sail.artifact import AlignmentHeads, BackboneRecord, HeadsConfig
from vlalign.sail.config import HeadConfig
from vlalign.sail.heads import create_head
from vlalign.store import EncodeOptions, FeatureStore, encode_store
from vlalign.store.compose import compose_store

# Each image is a 4 x 4 grid of black and white cells (8 px each); its caption names the white
# cells ("c1 c3 ..."). Every image has 2 white corners, 4 white edge cells and 2 white centre
# cells, so any symmetric average over the whole image is the same for all of them.
RINGS = ([0, 3, 12, 15], [1, 2, 4, 7, 8, 11, 13, 14], [5, 6, 9, 10])
PERFECT = "bundled:pixels?size=4&patch=4"  # one pixel per cell: sees every bit
PARTIAL = "bundled:pixels?size=2&patch=2"  # one pixel per quadrant: sees how many are white
BLIND = "bundled:pixels?size=1&patch=1"  # the symmetric average: the same for every image
WORDS = "bundled:bow?dim=1024&bigrams=0"  # one hashed bucket per cell name
TEST_ITEMS = 64


def _write_cells(folder: Path, name: str, combos: list[tuple[int, ...]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, white in enumerate(combos):
        grid = np.zeros((4, 4), np.uint8)
        grid.flat[list(white)] = 255
        pixels = np.kron(grid, np.ones((8, 8), np.uint8))
        path = folder / f"{name}_{i}.png"
        Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(path)
        rows.append({"image": str(path), "caption": " ".join(f"c{c}" for c in white)})
    with (folder / f"{name}.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, ["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return f"csv:{folder / name}.csv"


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> tuple[str, str]:
    """(train, test) specs of 384 and 64 cell images with disjoint patterns."""
    combos = [tuple(sorted(a + b + c)) for a in itertools.combinations(RINGS[0], 2)
              for b in itertools.combinations(RINGS[1], 4)
              for c in itertools.combinations(RINGS[2], 2)]
    pick = np.random.default_rng(0).choice(len(combos), 384 + TEST_ITEMS, replace=False)
    folder = tmp_path_factory.mktemp("cells")
    return (_write_cells(folder, "train", [combos[i] for i in pick[:384]]),
            _write_cells(folder, "test", [combos[i] for i in pick[384:]]))


@pytest.fixture(scope="module")
def probe_run(cells, tmp_path_factory, one_thread) -> tuple[Path, dict]:
    """The CLI's probe over 3 vision x 1 text encoders, digits as the labelled set."""
    out = tmp_path_factory.mktemp("probe")
    train, test = cells
    code = main(["probe", "--vision", f"{PERFECT},{PARTIAL},{BLIND}", "--text", WORDS,
                 "--data", train, "--test-data", test, "--labelled", "digits:train,digits:test",
                 "--set", "sail.epochs=30", "--set", "sail.batch_size=128", "--out", str(out),
                 "--quiet"])
    assert code == 0
    return out, json.loads((out / "probe.json").read_text())


def _pair(result: dict, vision: str) -> dict:
    (pair,) = [p for p in result["pairs"] if p["vision"] == vision]
    return pair


def test_alignable_pair_is_perfect_and_blind_pair_is_at_chance(probe_run):
    _, result = probe_run
    perfect, partial, blind = (_pair(result, v) for v in (PERFECT, PARTIAL, BLIND))
    assert perfect["image_retrieval_recall@1"] == 1.0
    assert perfect["text_retrieval_recall@1"] == 1.0
    assert perfect["alignment"] == 1.0
    chance_at_10 = 10 / TEST_ITEMS
    assert blind["alignment"] <= chance_at_10 + 0.02
    assert blind["image_retrieval_recall@1"] <= 2 / TEST_ITEMS
    assert blind["alignment"] < partial["alignment"] < perfect["alignment"]


def test_probe_measures_clustering_separability_and_text(probe_run):
    _, result = probe_run
    perfect, blind = result["vision"][PERFECT], result["vision"][BLIND]
    for k in (10, 20, 100, 200):
        assert 0 <= blind[f"digits/knn_acc@{k}"] <= perfect[f"digits/knn_acc@{k}"] <= 1
    assert perfect["digits/lp_acc1"] > 0.7  # 4 x 4 digits still separate
    assert blind["digits/lp_acc1"] < 0.25  # three equal numbers per image: chance is 0.1
    # the CSV repeats the raw caption as the rewritten one: paraphrases are identical
    assert result["text"][WORDS]["paraphrase_r@1"] == 1.0
    correlation = result["correlations"]["mean over text encoders | digits"]
    for measure in ("knn", "linear_probe"):
        assert correlation[measure]["spearman"] == pytest.approx(1.0)  # same order, 3 points
        assert correlation[measure]["pearson_low"] <= correlation[measure]["pearson"]
        assert correlation[measure]["pearson"] <= correlation[measure]["pearson_high"]


def test_probe_report_has_tables_scatter_and_heat_map(probe_run):
    out, _ = probe_run
    page = (out / "report.html").read_text()
    for figure in ("probe_scatter_digits", "probe_heat_map"):
        assert f"alt='{figure}'" in page
        assert (out / "report_files" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")
    markdown = (out / "report.md").read_text()
    assert "Pearson vs k-NN@20" in markdown and "paraphrase_r@1" in markdown
    assert "## Training" not in markdown  # the probe's own runs are summarised by the probe


def test_probe_rerun_reuses_stores_and_trained_probes(probe_run, cells, capsys):
    out, result = probe_run
    heads = sorted(out.glob("runs/*/heads.safetensors"))
    assert len(heads) == 3
    stamps = [p.stat().st_mtime_ns for p in heads]
    # as if the first run had been killed while finishing a store: the rerun completes it
    (manifest,) = out.glob("stores/images/*size_4_patch_4__*test.csv/manifest.json")
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"status": "encoding"}))
    train, test = cells
    assert main(["probe", "--vision", PERFECT, "--text", WORDS, "--data", train, "--test-data",
                 test, "--labelled", "digits:train,digits:test", "--set", "sail.epochs=30",
                 "--set", "sail.batch_size=128", "--out", str(out), "--quiet"]) == 0
    assert [p.stat().st_mtime_ns for p in heads] == stamps
    assert len(list(out.glob("quality/*.json"))) == 3  # k-NN and probe: computed once each
    assert json.loads(manifest.read_text())["status"] == "complete"
    again = json.loads((out / "probe.json").read_text())
    assert _pair(again, PERFECT) == _pair(result, PERFECT)
    assert "1.0000  bundled:pixels?size=4&patch=4" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--vision", PERFECT, "--text", WORDS, "--labelled", "digits:train"], "--labelled takes"),
    (["--vision", PERFECT], "at least one vision and one text"),
    (["--vision", "bundled:nope", "--text", WORDS], "unknown bundled vision model"),
    (["--vision", PERFECT, "--text", WORDS, "--set", "sail.epochs=x"], "sail.epochs"),
])
def test_probe_user_errors_are_one_line(argv, message, tmp_path, capsys):
    assert main(["probe", *argv, "--out", str(tmp_path / "p"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def _store(data: str, vision: str, text: str, out: Path) -> FeatureStore:
    encode_store(create_source(data), create_vision_encoder(vision), create_text_encoder(text),
                 out, kinds=["raw", "rewritten"], specs=(vision, text),
                 options=EncodeOptions(shard_size=32, num_workers=0, progress=False))
    return FeatureStore(out, verify=True)


def test_compose_takes_images_from_one_store_and_texts_from_the_other(tmp_path, one_thread):
    images = _store("digits:train[:70]", PERFECT, "bundled:bow", tmp_path / "a")
    texts = _store("digits:train[:70]", BLIND, WORDS, tmp_path / "b")
    both = compose_store(images, texts, tmp_path / "ab")
    rows = np.arange(70)
    np.testing.assert_array_equal(both.images(rows), images.images(rows))
    np.testing.assert_array_equal(both.texts(rows), texts.texts(rows))
    assert both.backbones == (images.backbones[0], texts.backbones[1])
    FeatureStore(tmp_path / "ab", verify=True)  # checksums of the linked shards hold
    assert compose_store(images, texts, tmp_path / "ab").path == both.path  # idempotent
    other = _store("digits:train[:40]", BLIND, WORDS, tmp_path / "c")
    with pytest.raises(StoreError, match="different data"):
        compose_store(images, other, tmp_path / "ac")


def test_correlations_match_scipy_and_intervals_cover_them():
    rng = np.random.default_rng(1)
    x = rng.normal(size=12)
    y = x + rng.normal(scale=0.5, size=12)
    result = stats.correlation(x, y, seed=0)
    assert result["pearson"] == pytest.approx(scipy_stats.pearsonr(x, y)[0])
    assert result["spearman"] == pytest.approx(scipy_stats.spearmanr(x, y)[0])
    assert result["pearson_low"] < result["pearson"] < result["pearson_high"] <= 1
    ties = np.array([1.0, 2.0, 2.0, 3.0])
    assert stats.spearman(ties, ties[::-1]) == pytest.approx(
        scipy_stats.spearmanr(ties, ties[::-1])[0])
    exact = stats.correlation(x, 2 * x + 1)
    assert exact["pearson_low"] == pytest.approx(1.0) and exact["spearman"] == pytest.approx(1.0)
    assert np.isnan(stats.pearson(x, np.ones(12)))


def test_paired_difference_prefers_the_better_predictor():
    rng = np.random.default_rng(2)
    x = rng.normal(size=15)
    close, noisy = x + rng.normal(scale=0.1, size=15), x + rng.normal(scale=2.0, size=15)
    diff = stats.paired_difference(x, close, noisy, seed=0)
    assert diff["difference"] == pytest.approx(stats.pearson(x, close) - stats.pearson(x, noisy))
    assert 0 < diff["low"] <= diff["difference"] <= diff["high"]


# --- the official probe: LayerNorm + Linear heads, the official script's recipe ---------------

def test_probe_head_is_layernorm_then_linear():
    torch.manual_seed(0)
    head = create_head("linear", 12, 6, norm=True)
    assert isinstance(head.norm, torch.nn.LayerNorm)
    assert set(head.state_dict()) == {"norm.weight", "norm.bias", "proj.weight", "proj.bias"}
    for shape in [(5, 12), (3, 7, 12)]:
        x = torch.randn(shape)
        expected = head.proj(F.layer_norm(x, (12,), head.norm.weight, head.norm.bias))
        assert head(x).shape == (*shape[:-1], 6)
        torch.testing.assert_close(head(x), expected)
    x = torch.randn(4, 12)
    torch.testing.assert_close(head(50 * x + 3), head(x), rtol=1e-4, atol=1e-4)  # scale-free
    assert head.config == {"kind": "linear", "in_dim": 12, "out_dim": 6, "norm": True}
    rebuilt = create_head(**head.config)  # the config round trip
    rebuilt.load_state_dict(head.state_dict())
    torch.testing.assert_close(rebuilt(x), head(x))
    plain = create_head("linear", 12, 6)
    assert plain.config["norm"] is False and set(plain.state_dict()) == {"proj.weight",
                                                                           "proj.bias"}


def _heads_config(vision_head: dict, text_head: dict) -> HeadsConfig:
    return HeadsConfig(vision_head=vision_head, text_head=text_head,
                       vision=BackboneRecord("bundled:v", "v-id", 12),
                       text=BackboneRecord("bundled:t", "t-id", 8))


def test_old_heads_json_without_norm_loads_as_trained(tmp_path):
    torch.manual_seed(0)
    vision, text = create_head("linear", 12, 6), create_head("linear", 8, 6)
    old = _heads_config({"kind": "linear", "in_dim": 12, "out_dim": 6},  # written before `norm`
                        {"kind": "linear", "in_dim": 8, "out_dim": 6})
    AlignmentHeads(vision, text, old).save_pretrained(tmp_path / "old")
    assert "norm" not in json.loads((tmp_path / "old" / "heads.json").read_text())["vision_head"]
    loaded = AlignmentHeads.from_pretrained(tmp_path / "old")
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in loaded.modules())
    x = torch.randn(3, 12)
    torch.testing.assert_close(loaded.encode_image_features(x, normalize=False), vision(x))
    vision, text = create_head("linear", 12, 6, norm=True), create_head("linear", 8, 6, norm=True)
    AlignmentHeads(vision, text, _heads_config(vision.config, text.config)).save_pretrained(
        tmp_path / "new")
    assert json.loads((tmp_path / "new" / "heads.json").read_text())["vision_head"]["norm"]
    loaded = AlignmentHeads.from_pretrained(tmp_path / "new")
    assert isinstance(loaded.vision_head.norm, torch.nn.LayerNorm)
    torch.testing.assert_close(loaded.encode_image_features(x, normalize=False), vision(x))


def test_probe_runs_train_layernorm_linear_heads(probe_run):
    out, _ = probe_run
    assert linear_probe_recipe().vision_head == HeadConfig(kind="linear", norm=True)
    assert linear_probe_recipe().text_head == HeadConfig(kind="linear", norm=True)
    for run in sorted(out.glob("runs/*/heads.json")):
        config = json.loads(run.read_text())
        assert config["vision_head"]["norm"] is True and config["text_head"]["norm"] is True
        heads = AlignmentHeads.from_pretrained(run.parent)
        assert isinstance(heads.vision_head.norm, torch.nn.LayerNorm)


def test_probe_paper_recipe_is_the_official_script():
    """configs/probe-paper.yaml = SAIL's scripts/alignment_probing.sh (see the YAML's notes)."""
    config = load_config(ProbeConfig, Path(__file__).parents[1] / "configs" / "probe-paper.yaml")
    sail = config.sail
    assert sail.vision_head == sail.text_head == HeadConfig(kind="linear", norm=True,
                                                            init="xavier")
    assert (sail.embed_dim, sail.loss, sail.positives) == (2048, "sigmoid", ["raw", "rewritten"])
    optim = sail.optim
    assert (optim.name, optim.lr, optim.weight_decay) == ("lion", 1e-5, 1e-7)
    assert (optim.beta1, optim.beta2) == (0.9, 0.99)
    assert (optim.warmup_fraction, optim.min_lr_fraction, optim.grad_clip) == (0.1, 0.0, 0.0)
    assert (sail.batch_size, sail.epochs, sail.precision, sail.seed) == (32768, 100, "fp16", 42)
    assert config.test_data.startswith("coco:")


def test_caption_kinds_of_a_retrieval_benchmark(tmp_path):
    entries = [{"filepath": "val2014", "filename": f"{i}.jpg", "split": "test",
                "sentences": [{"raw": f"caption {k}"} for k in range(n)]}
               for i, n in enumerate((5, 7, 6))]
    (tmp_path / "val2014").mkdir()
    for entry in entries:
        Image.new("RGB", (4, 4)).save(tmp_path / "val2014" / entry["filename"])
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    assert caption_kinds(create_benchmark(f"coco:{tmp_path}")) == ["0", "1", "2", "3", "4"]
    assert caption_kinds(create_benchmark(f"coco:{tmp_path}[1:]")) == [str(k) for k in range(6)]
    assert caption_kinds(create_source("digits:train[:10]")) == ["raw", "rewritten"]
    # the probe finds benchmark specs (probe-paper.yaml tests on coco:) and stores 5 captions
    store = StoreFinder(tmp_path / "stores", [], "data", progress=False).get(
        f"coco:{tmp_path}", PERFECT, WORDS, 1)
    assert store.caption_kinds == ["0", "1", "2", "3", "4"] and len(store) == 3
    assert store.captions[1] == [f"caption {k}" for k in range(5)]

"""UTAModel: the CLIP-like interface on a student + teacher text side, save/load without pickle,
the evaluation suite on it, and fine-tuning (linear probe, full, from scratch)."""

import json
from pathlib import Path

import pytest
import torch

from test_uta_train import save_sail_teacher, tiny_config
from vlalign.backbones.base import image_to_tensor
from vlalign.data import create_source
from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.data.templates import format_prompt, templates_for
from vlalign.errors import UserError
from vlalign.eval import linear_probe, segmentation
from vlalign.eval.finetune import Classifier, FinetuneConfig, finetune
from vlalign.eval.tasks import Context, zeroshot_classification, zeroshot_segmentation
from vlalign.models import UTAModel, load_model
from vlalign.uta.artifact import load_student
from vlalign.uta.student import UTAStudent
from vlalign.uta.teachers import create_teacher
from vlalign.uta.train import train_uta
from vlalign.utils.checkpoint import load_tensors

pytestmark = pytest.mark.usefixtures("one_thread")
EMOJI = Path("data") / "emoji" / "emoji.json"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uta_model")
    teacher = save_sail_teacher(root / "sail")
    train_uta(tiny_config(teacher), root / "run", progress=False, max_steps=3)
    return root / "run"


def _images(n: int = 3) -> list:
    source = create_source("digits:test")
    return [source.load(i).image for i in range(n)]


def _labelled(spec: str, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of a labelled source as preprocessed pixels, and the labels."""
    source = create_source(spec)
    items = [source.load(i) for i in range(len(source))]
    pixels = torch.stack([image_to_tensor(item.image, preprocess) for item in items])
    return pixels, torch.tensor([item.label for item in items])


def test_save_load_round_trip_and_clip_interface(run: Path, tmp_path: Path) -> None:
    model = load_model(run)
    assert isinstance(model, UTAModel) and model.config["step"] == 3
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "student.safetensors", "uta.json"]
    again = UTAModel.from_pretrained(tmp_path / "saved")
    pixels = torch.stack([model.preprocess(im) for im in _images()])
    assert pixels.shape == (3, 3, 64, 64)
    image = model.encode_image(pixels, normalize=True)
    torch.testing.assert_close(again.encode_image(_images(), normalize=True), image)
    assert image.shape == (3, 16) and torch.allclose(image.norm(dim=-1), torch.ones(3))
    teacher = create_teacher(model.teacher_spec)
    torch.testing.assert_close(model.encode_text(model.tokenizer(["a cat"])),
                               teacher.encode_text(["a cat"]))
    tokens, grid = model.encode_image_tokens(_images(2))
    assert grid == (2, 2) and tokens.shape == (2, 4, 16)
    probs = model.classify(_images(), ["zero", "one", "two"], templates=["a digit {}."])
    assert probs.shape == (3, 3) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


def test_a_changed_teacher_is_refused(run: Path, tmp_path: Path) -> None:
    load_model(run).save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "uta.json").read_text())
    config["teacher"]["identity"] = "sail:something-else"
    (tmp_path / "saved" / "uta.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="distilled from sail:something-else"):
        load_model(tmp_path / "saved")
    with pytest.raises(UserError, match="not a UTA model"):
        finetune(tmp_path / "nowhere", "digits:train[:8]", "digits:test[:8]", FinetuneConfig())


def test_evaluation_suite_tasks_equal_the_models_own_predictions(run: Path) -> None:
    model = load_model(run)
    context = Context(batch_size=16, progress=False)
    digits = create_source("digits:test[:24]")
    metrics = zeroshot_classification(model, digits, None, context).metrics
    pixels, labels = _labelled("digits:test[:24]", model.image_preprocess)
    probs = model.classify(pixels, digits.class_names, templates_for(digits.name))
    assert metrics["acc1"] == pytest.approx((probs.argmax(dim=1) == labels).float().mean().item())
    assert metrics["skipped"] == 0
    if not EMOJI.is_file():
        pytest.skip("emoji data not installed (make install)")
    canvases = create_benchmark("emoji-canvas:test?by=subcategory&count=2", "data")
    result = zeroshot_segmentation(model, canvases, None, context)
    templates = templates_for(canvases.name)
    prompts = [format_prompt(t, c) for c in canvases.class_names for t in templates]
    classes = model.encode_text(prompts, normalize=True).view(len(canvases.class_names),
                                                              len(templates), -1).mean(dim=1)
    items = [canvases.load(i) for i in range(len(canvases))]
    tokens, grid = model.encode_image_tokens([item.image for item in items])
    accumulator = segmentation.ConfusionAccumulator(len(canvases.class_names))
    for i, (item, patches) in enumerate(zip(items, tokens)):
        logits = segmentation.dense_logits(patches[None], grid, classes, item.mask.shape)
        predicted = logits[0].argmax(dim=0).numpy()
        assert (predicted == result.arrays[f"pred_{i}"]).mean() > 0.999
        accumulator.update(predicted, item.mask)
    assert result.metrics["miou"] == pytest.approx(accumulator.metrics()["miou"], abs=1e-3)


def test_finetune_linear_full_and_from_scratch(run: Path, tmp_path: Path) -> None:
    train, test = "digits:train[:48]", "digits:test[:24]"
    linear = finetune(run, train, test, FinetuneConfig(device="cpu"), progress=False)
    student, preprocess, _ = load_student(run)
    (train_x, train_y), (test_x, test_y) = (_labelled(spec, preprocess) for spec in (train, test))
    with torch.no_grad():  # the suite's linear probe on the student's features, computed here
        probe = linear_probe.evaluate(student.forward_features(train_x), train_y,
                                      student.forward_features(test_x), test_y)
    assert linear["metrics"]["lp_acc1"] == pytest.approx(probe["lp_acc1"])
    for scratch in (False, True):
        config = FinetuneConfig(mode="full", from_scratch=scratch, epochs=2, batch_size=16,
                                precision="fp32", device="cpu")
        record = finetune(run, train, test, config, out=tmp_path / str(scratch), progress=False)
        classes = len(create_source(test).class_names)
        classifier = Classifier(UTAStudent(student.config), classes).eval()
        classifier.load_state_dict(load_tensors(tmp_path / str(scratch) /
                                                "classifier.safetensors"))
        with torch.no_grad():  # the reported accuracy is the saved classifier's
            accuracy = (classifier(test_x).argmax(dim=1) == test_y).float().mean().item()
        assert record["metrics"]["steps"] == 6
        assert record["metrics"]["acc1"] == pytest.approx(accuracy)
        assert record["settings"]["from_scratch"] == scratch
        saved = json.loads((tmp_path / str(scratch) / "finetune.json").read_text())
        assert saved["metrics"] == record["metrics"]
        assert (tmp_path / str(scratch) / "classifier.safetensors").exists()
    for name in ("cat", "dog"):  # a labelled folder with other classes than the digits
        (tmp_path / "pets" / name).mkdir(parents=True)
        _images(1)[0].save(tmp_path / "pets" / name / "a.png")
    with pytest.raises(UserError, match="different classes"):
        finetune(run, "digits:train[:8]", f"folder:{tmp_path / 'pets'}", FinetuneConfig())


def test_zeroshot_head_starts_fine_tuning_at_the_zero_shot_predictions(run: Path) -> None:
    """head_init=zeroshot: before any step, the classifier predicts what zero-shot
    classification predicts (the per-image norm it leaves out does not move an argmax)."""
    from vlalign.eval.finetune import zeroshot_head
    from vlalign.uta.data import ImageRows

    model = load_model(run)
    student, preprocess, _ = load_student(run)
    spec = "digits:test[:40]"
    source = create_source(spec)
    classifier = Classifier(student, len(source.class_names)).eval()
    zeroshot_head(classifier, model, ImageRows([source], preprocess), source.class_names,
                  templates_for(spec), torch.device("cpu"))
    pixels, _ = _labelled(spec, preprocess)
    with torch.no_grad():
        tuned = classifier(pixels).argmax(dim=1)
    probs = model.classify(pixels, source.class_names, templates_for(spec))
    assert torch.equal(tuned, probs.argmax(dim=1))
    assert classifier.fc.weight.abs().sum() > 0

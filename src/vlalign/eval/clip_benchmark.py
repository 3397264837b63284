"""CLIP_benchmark on vlalign models: ``vlalign clip-benchmark eval|build ARGS...``.

``main(argv)`` runs CLIP_benchmark's own command line in this process (``argv`` is what
``clip_benchmark`` would get) with one more model type, ``vlalign``::

    vlalign clip-benchmark eval --model_type vlalign --model runs/demo/sail \\
        --dataset wds/digits --dataset_root data/wds/digits --task zeroshot_classification

``--model`` is anything ``vlalign.models.load_model`` opens (a run folder, a saved model,
``open_clip:ARCH/TAG``, ``random-heads:RUN``), or ``NAME=MODEL`` to name it; the loader hands
CLIP_benchmark ``(model, model.preprocess, model.tokenizer)`` as its own loaders do (vlalign
models have open_clip's methods: ``tokenizer(texts).to(device)``, ``encode_text(tokens)``,
``encode_image(pixels)``). ``--pretrained`` is ignored for this type: the record's ``model`` and
``pretrained`` are what ``vlalign eval`` writes (the name, by default the folder's, and the
spec; ARCH and TAG for ``open_clip:ARCH/TAG``), so both commands' records merge, and in
``--output`` templates ``{model}``/``{pretrained}`` are file-name-safe (``/`` -> ``_``; the
output folder is created). ``--no_amp`` keeps fp32: by default CLIP_benchmark autocasts, to
bf16 on the CPU. ``build`` reads the records in a folder and in its folders, so it takes a
``vlalign eval --suite`` folder (records in OUT/<name>/, results.json beside them) as it is.

While ``main`` runs, and only then, it also patches CLIP_benchmark 1.6.2 where vlalign's pins
break it: ``metrics.zeroshot_classification.accuracy`` (which ``metrics.linear_probe`` imports)
calls ``float()`` on a one-element array, a TypeError since numpy 2.4 ("only 0-dimensional
arrays can be converted to Python scalars"; vlalign pins numpy 2.4.6), so it is replaced by the
same computation taking ``.item()``. CLIP_benchmark 1.6.2 also imports ``requests`` without
declaring it: the ``vlalign[clip-benchmark]`` extra installs both.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from vlalign.errors import UserError
from vlalign.eval.run import record_model, result_files

MODEL_TYPE = "vlalign"
INSTALL = "pip install 'vlalign[clip-benchmark]'"


def _clip_benchmark_cli() -> ModuleType:
    """``clip_benchmark.cli``, or a one-line UserError saying what to install."""
    try:
        import clip_benchmark.cli as cli
    except ImportError as error:
        raise UserError(f"CLIP_benchmark cannot be imported ({error}): {INSTALL}") from None
    return cli


def accuracy(output: torch.Tensor, target: torch.Tensor,
             topk: tuple[int, ...] = (1,)) -> list[float]:
    """CLIP_benchmark 1.6.2's top-k accuracy, with ``.item()`` where it calls ``float()`` on a
    one-element array (a TypeError under numpy >= 2.4)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def _named(model: str) -> tuple[str, str]:
    """``NAME=MODEL`` or ``MODEL`` -> (name, model), the name by default the folder's name (as
    ``vlalign eval --model`` names models)."""
    name, equals, spec = model.partition("=")
    if equals and name and "/" not in name and ":" not in name:
        return name, spec
    return Path(model.removeprefix("random-heads:")).name or model, model


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _output(cli: ModuleType, args: Any) -> str:
    """``args.output`` filled as CLIP_benchmark fills it, with file-name-safe model names, its
    folder created, and braces escaped so CLIP_benchmark's own ``format`` leaves it as it is."""
    dataset = args.dataset.removeprefix("wds/")
    task = cli.get_dataset_default_task(dataset) if args.task == "auto" else args.task
    output = args.output.format(model=_slug(args.model), pretrained=_slug(args.pretrained),
                                pretrained_full_path=_slug(args.pretrained), task=task,
                                dataset=dataset.replace("/", "_"), language=args.language)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    return output.replace("{", "{{").replace("}", "}}")


def _loader(specs: dict[tuple[str, str], str]) -> Callable[..., tuple[Any, Any, Any]]:
    """CLIP_benchmark's loader signature for vlalign models; ``specs`` maps a run's (model,
    pretrained) back to the model it names."""
    def load_vlalign(model_name: str, pretrained: str, cache_dir: str | None = None,
                     device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
        from vlalign.models import load_model

        model = load_model(specs.get((model_name, pretrained), model_name), device=str(device))
        return model, model.preprocess, model.tokenizer

    return load_vlalign


def _run(cli: ModuleType, original: Callable[[Any], Any],
         specs: dict[tuple[str, str], str]) -> Callable[[Any], Any]:
    """CLIP_benchmark's ``run(args)`` (one model x dataset x language), naming vlalign models
    as ``vlalign eval`` does."""
    def run(args: Any) -> Any:
        if args.model_type != MODEL_TYPE:
            return original(args)
        args = copy.copy(args)
        name, spec = _named(args.model)
        args.model, args.pretrained = record_model(name, spec)
        specs[(args.model, args.pretrained)] = spec
        args.output = _output(cli, args)
        return original(args)

    return run


@contextmanager
def _patched(cli: ModuleType, argv: list[str]) -> Iterator[None]:
    """The vlalign model type registered, ``accuracy`` and ``run`` replaced, ``sys.argv`` set;
    all restored afterwards."""
    import clip_benchmark.models as models
    from clip_benchmark.metrics import linear_probe, zeroshot_classification

    specs: dict[tuple[str, str], str] = {}
    saved = (sys.argv, cli.run, zeroshot_classification.accuracy, linear_probe.accuracy)
    models.TYPE2FUNC[MODEL_TYPE] = _loader(specs)
    added = MODEL_TYPE not in models.MODEL_TYPES  # cli's --model_type choices: the same list
    if added:
        models.MODEL_TYPES.append(MODEL_TYPE)
    sys.argv = ["clip_benchmark", *argv]
    cli.run = _run(cli, cli.run, specs)
    zeroshot_classification.accuracy = linear_probe.accuracy = accuracy
    try:
        yield
    finally:
        sys.argv, cli.run, zeroshot_classification.accuracy, linear_probe.accuracy = saved
        del models.TYPE2FUNC[MODEL_TYPE]
        if added:
            models.MODEL_TYPES.remove(MODEL_TYPE)


def _build_inputs(argv: list[str]) -> list[str]:
    """``build`` arguments with each folder replaced by the records in it and in its folders
    (a ``vlalign eval --suite`` folder: OUT/<name>/*.json); CLIP_benchmark's own build reads a
    folder's ``*.json`` and stops at the first that is not a record (results.json)."""
    expanded, value_next = [], False
    for arg in argv:
        folder = Path(arg)
        if not value_next and not arg.startswith("-") and folder.is_dir():
            folders = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
            found = [str(path) for sub in folders for path, _ in result_files(sub)]
            if not found:
                raise UserError(f"{folder}: no result records (JSON with task and metrics) "
                                "there or in its folders")
            expanded += found
        else:
            expanded.append(arg)
        value_next = arg == "--output"
    return expanded


def main(argv: list[str]) -> int:
    """Run ``clip_benchmark ARGV`` here with the vlalign model type; returns the exit code."""
    cli = _clip_benchmark_cli()
    if argv[:1] == ["build"]:
        argv = ["build", *_build_inputs(argv[1:])]
    with _patched(cli, argv):
        try:
            cli.main()
        except SystemExit as done:  # argparse: --help, or a usage error it has printed
            return done.code if isinstance(done.code, int) else int(done.code is not None)
    return 0

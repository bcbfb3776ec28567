#!/usr/bin/env bash
# Set up avsentry on a fresh Debian/Ubuntu machine, idempotently:
#   - system packages (speech engines for training data, PortAudio for the microphone client),
#     installed with apt-get only when missing;
#   - a virtual environment in .venv with the package installed in editable mode;
#   - on a host where nvidia-smi sees a GPU, onnxruntime-gpu in place of onnxruntime.
# Usage: tools/setup.sh [--dev] [--ray]   (--dev adds pytest, ruff, mypy, grpcio-tools, IBM ART, ffmpeg,
#                                          Envoy and Ray Serve; --ray adds Ray Serve alone)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
ray=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --ray) ray=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

# festival voices of other languages speak accented English digits (tools/data/accented_voices.toml);
# the asterisk prompts are real speech of people in other languages (tools/realspeech.py). Never
# install asterisk-core-sounds-en* or pocketsphinx-testdata here: they are a reserved test set.
apt_packages=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
              festvox-italp16k festvox-itapc16k festvox-czech-dita festvox-czech-krb festvox-czech-machac
              festvox-czech-ph festvox-suopuhe-lj festvox-suopuhe-mv
              asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav
              asterisk-core-sounds-ru-wav asterisk-prompt-fr-armelle asterisk-prompt-es-co
              sox libportaudio2 python3-venv pulseaudio pulseaudio-utils libasound2-plugins openssl)
# --dev: the ffmpeg binary IBM ART's VideoCompression shells out to (avsentry bench video)
[ "$dev" -eq 1 ] && apt_packages+=(ffmpeg)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null; then python=$candidate; break; fi
  done
fi
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "setup: Python >= 3.11 needed, $python is $("$python" -V 2>&1)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="train,eval"
[ "$ray" -eq 1 ] && extras="$extras,ray"
[ "$dev" -eq 1 ] && extras="train,eval,art,ray,dev"
extras="[$extras]"
.venv/bin/python -m pip install -q -e ".${extras}"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  # Both wheels provide the module `onnxruntime`; the package depends on the CPU one, so on a GPU
  # host swap it for onnxruntime-gpu (CUDA execution provider) after every install.
  echo "setup: GPU found, using onnxruntime-gpu"
  .venv/bin/python -m pip uninstall -q -y onnxruntime onnxruntime-gpu >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "onnxruntime-gpu>=1.18"
fi
echo "setup: ready ($(.venv/bin/python -V), $(.venv/bin/avsentry --help >/dev/null && echo avsentry ok))"

#!/usr/bin/env bash
# Builds (once) one virtual environment per peer library and prints "name python" lines for the peer harness.
# Usage: bash bench/peers/install.sh [sae_lens] [sparsify] [dictionary_learning]   (default: all three)
# torch==2.13.0 goes in first, alone, so that each peer's resolver keeps the CPU wheel saeforge is measured on.
# Cached by pins under ${SAEFORGE_VENV_CACHE:-~/.cache/saeforge/venvs}; built in a temporary directory and
# renamed into place, so an interrupted build is never reused. Delete a directory to rebuild it.
set -euo pipefail
ROOT="${SAEFORGE_VENV_CACHE:-$HOME/.cache/saeforge/venvs}"
declare -A PINS=(
    [sae_lens]="sae-lens==6.54.12 transformer-lens==3.9.0"
    [sparsify]="eai-sparsify==1.3.3"
    [dictionary_learning]="dictionary-learning==0.1.0"
)
declare -A DIRS=(
    [sae_lens]="saelens-6.54.12-tl-3.9.0"
    [sparsify]="sparsify-1.3.3"
    [dictionary_learning]="dictionary-learning-0.1.0"
)
declare -A IMPORTS=([sae_lens]="sae_lens" [sparsify]="sparsify" [dictionary_learning]="dictionary_learning")
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(sae_lens sparsify dictionary_learning)
mkdir -p "$ROOT"
for name in "${NAMES[@]}"; do
    venv="$ROOT/${DIRS[$name]}"
    if [ ! -x "$venv/bin/python" ]; then
        tmp="$(mktemp -d "$ROOT/.build.XXXXXX")"
        python -m venv "$tmp" >&2
        "$tmp/bin/pip" install -q torch==2.13.0 >&2
        "$tmp/bin/pip" install -q torch==2.13.0 ${PINS[$name]} >&2
        # A torchvision built for another torch breaks `import transformers` (dictionary_learning -> nnsight);
        # no peer's training step uses it.
        "$tmp/bin/pip" uninstall -q -y torchvision >&2 || true
        "$tmp/bin/python" -c "import ${IMPORTS[$name]}" >&2
        rm -rf "$venv"
        mv "$tmp" "$venv"
    fi
    echo "$name $venv/bin/python"
done

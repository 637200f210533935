#!/usr/bin/env bash
# The GPU check in one command, from the repository root: `bash bench/gpu/gpu-check.sh
# [--dry-run] [...]` (what `make gpu-check` runs). On a machine without the runtime's web
# packages (fastapi and friends) it installs them first from the bundle `make gpu-bundle`
# prepared, with no network. Results go to $OUT (default .gpu-check-out/), the log too.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=${GPU_BUNDLE:-.gpu-bundle}
OUT=${OUT:-.gpu-check-out}
export OUT
mkdir -p "$OUT"

if [[ -z "${PYTHON:-}" ]]; then
    # The project's venv when it has torch (here), else the machine's own Python (a GPU box).
    if [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import torch' 2>/dev/null; then
        PYTHON=.venv/bin/python
    else
        PYTHON=python3
    fi
fi

if ! "$PYTHON" -c 'import fastapi, uvicorn, pydantic' 2>/dev/null; then
    if ! compgen -G "$BUNDLE/wheels/*.whl" >/dev/null; then
        echo "gpu-check: fastapi, uvicorn or pydantic missing and no wheels in $BUNDLE/wheels;" \
            "run \`make gpu-bundle\` on a machine with network and carry $BUNDLE along" >&2
        exit 2
    fi
    SITE=${GPU_CHECK_SITE:-/tmp/batchpilot-gpu-site}
    echo "gpu-check: installing $(ls "$BUNDLE"/wheels/*.whl | wc -l) wheels from $BUNDLE into $SITE"
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
        PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$BUNDLE"/wheels/*.whl
    else
        # No pip: a wheel is a zip archive laid out for site-packages.
        "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
            "$SITE" "$BUNDLE"/wheels/*.whl
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}contract:runtime:operator:cluster:."
export HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
"$PYTHON" -m bench.gpu.check --bundle "$BUNDLE" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu-check.log"

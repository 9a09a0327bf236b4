#!/usr/bin/env bash
# Run the GPU-profile benchmarks in order of importance inside one time budget (a lent GPU is short-lived),
# then pack every result JSON, metric, status and log into OUT_DIR/gpu_results.tgz.
#
#   BUDGET_S=480 [PARALLEL=1] bash bench/gpu_session.sh OUT_DIR [chain ...]     (default: gland malignant rpnet)
#
# Chains: gland / malignant = CAM stage -> IRN steps -> segmentation on pseudo-masks -> supervised upper bound ->
# the weak result again with --keep (reuses every step, adds the checks against the supervised number);
# rpnet = the RPNet CAM on glas-gland + the ablation against the plain CAM of the gland chain. A failure ends its
# chain (later benches would only fail on the missing run folder); the next chain still runs. Reads
# ../shared/data/glas. $PYTHON (default python3) runs the benches. PARALLEL=1 runs the chains side by side (the
# networks are small: one chain leaves most of the GPU idle), each with an equal share of the CPU threads.
# The pack is refreshed every 30 s, so a lease that ends early still returns what had finished.
set -u
OUT=${1:?usage: gpu_session.sh OUT_DIR [chain ...]}; shift
CHAINS=${*:-gland malignant rpnet}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
export PYTHONUNBUFFERED=1
END=$(( $(date +%s) + ${BUDGET_S:-480} ))
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$LOGS/gpu.txt"

step() {  # step NAME ARGS...: one bench with the time left, logged to LOGS/NAME.log
  local name=$1; shift
  local left=$(( END - $(date +%s) ))
  if [ "$left" -lt 20 ]; then echo "SKIP $name (budget spent)"; return 2; fi
  local t0; t0=$(date +%s)
  timeout --signal=INT --kill-after=10 "$left" "$PY" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 )) s"
  [ "$rc" -ne 0 ] && tail -30 "$LOGS/$name.log"
  return $rc
}

pack() {  # atomic: a reader never sees half an archive
  tar czf "$OUT/.gpu_results.tgz.tmp" $(ls bench/results/*.gpu.* 2>/dev/null) \
      $(ls -d bench/work/*.gpu/{metrics,status,logs,config.yaml} 2>/dev/null) -C "$LOGS" . 2>/dev/null
  mv -f "$OUT/.gpu_results.tgz.tmp" "$OUT/gpu_results.tgz"
}
( while sleep 30; do pack; done ) &
PACKER=$!
trap 'kill $PACKER 2>/dev/null; pack; echo "packed $(du -h "$OUT/gpu_results.tgz" | cut -f1)"' EXIT

protocol_chain() {
  local p=$1
  step "cam_$p" bench/cam_glas.py --protocol "$p" --profile gpu &&
  step "irn_$p" bench/irn_glas.py --protocol "$p" --profile gpu &&
  step "seg_weak_$p" bench/seg_glas.py --protocol "$p" --profile gpu --mode weak &&
  step "seg_sup_$p" bench/seg_glas.py --protocol "$p" --profile gpu --mode supervised &&
  step "seg_weak_checks_$p" bench/seg_glas.py --protocol "$p" --profile gpu --mode weak --keep
}

chain() {
  case $1 in
    gland) protocol_chain glas-gland ;;
    malignant) protocol_chain glas-malignant ;;
    rpnet) step cam_rpnet_glas-gland bench/cam_glas.py --protocol glas-gland --profile gpu --network rpnet &&
           step rpnet_ablation_glas-gland bench/rpnet_ablation.py --protocol glas-gland --profile gpu ;;
    *) echo "unknown chain $1"; return 2 ;;
  esac
}

if [ "${PARALLEL:-0}" = 1 ]; then
  N=$(echo $CHAINS | wc -w)
  export OMP_NUM_THREADS=$(( ($(nproc) + N - 1) / N ))
  PIDS=()
  for c in $CHAINS; do chain "$c" & PIDS+=($!); done
  wait "${PIDS[@]}"
else
  for c in $CHAINS; do chain "$c"; done
fi

#!/usr/bin/env bash
# Before/after equality for a refactor that must not change behaviour: runs the smoke config on
# every executor layout, two personalizations of it, two tiny Tune searches and (unless "quick")
# the quickstart's first two rounds, from the source tree CHECKOUT (e.g. a `git worktree` of the
# old commit) into OUT, with this repository's .venv. Compare two OUTs with
# scripts/compare_outputs.py.
#   scripts/equality_check.sh CHECKOUT OUT [quick]
#   python scripts/compare_outputs.py OUT_BEFORE/smoke-ray OUT_AFTER/smoke-ray
set -euo pipefail
repo=$1; out=$2; mode=${3:-all}
export PYTHONPATH=$repo
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 WANDB_MODE=offline
rf="${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python} -m rayfed.cli"
mkdir -p "$out"; cd "$out"
smoke="$repo/configs/smoke.yaml"
$rf run "$smoke" runtime.executor=local output_dir=$out/smoke-local --overwrite > smoke-local.log 2>&1
$rf run "$smoke" output_dir=$out/smoke-ray --overwrite > smoke-ray.log 2>&1
$rf run "$smoke" runtime.num_workers=2 output_dir=$out/smoke-ray-w2 --overwrite > smoke-ray-w2.log 2>&1
$rf run "$smoke" runtime.num_workers=2 runtime.batch_clients=true output_dir=$out/smoke-ray-w2b --overwrite > smoke-ray-w2b.log 2>&1
$rf run "$smoke" runtime.num_workers=1 runtime.batch_clients=true output_dir=$out/smoke-ray-w1b --overwrite > smoke-ray-w1b.log 2>&1
# personalization of the smoke run: local executor, and on ray with 2 workers
$rf personalize $out/smoke-local runtime.executor=local personalize.local_epochs=2 personalize.l2_strength=0.1 personalize.interp_ratios=[0.0,0.5,1.0] > pers-local.log 2>&1
$rf personalize $out/smoke-ray-w2 runtime.num_workers=2 personalize.local_epochs=2 personalize.global_eval_examples=8 > pers-ray.log 2>&1
# a tiny tune search (personalize kind) and a federation-kind one
$rf tune "$repo/configs/tune/tiny.yaml" output_dir=$out/tune-tiny > tune.log 2>&1
$rf tune "$repo/configs/tune/tiny.yaml" tune.kind=federation output_dir=$out/tune-fed 'tune.space={algorithm.client_optimizer.lr: {type: grid, values: [0.01, 0.05]}}' > tune-fed.log 2>&1 || echo "tune-fed failed (see log)"
if [[ $mode == all ]]; then
  $rf run "$repo/configs/quickstart.yaml" algorithm.rounds=2 output_dir=$out/quick2 --overwrite > quick2.log 2>&1
fi
echo done

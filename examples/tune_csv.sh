#!/usr/bin/env bash
# Meta-train a policy once, then tune a model on any classification or regression CSV with it.
# Usage: examples/tune_csv.sh DATA.csv TARGET_COLUMN [TRIALS]
set -euo pipefail
data=${1:?usage: $0 DATA.csv TARGET_COLUMN [TRIALS]}
target=${2:?usage: $0 DATA.csv TARGET_COLUMN [TRIALS]}
trials=${3:-5}
hporl=${HPORL:-hporl}   # e.g. HPORL=.venv/bin/hporl

if [ ! -f runs/first/policy/policy.json ]; then
  "$hporl" meta-train "$(dirname "$0")/experiment.yaml" --out runs/first
fi
"$hporl" tune --policy runs/first --data "$data" --target "$target" --trials "$trials" --epochs 10 \
  --out "runs/tune-$(basename "$data" .csv)"
echo "report: runs/tune-$(basename "$data" .csv)/report.json"

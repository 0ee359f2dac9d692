#!/usr/bin/env bash
# Copy the small, finished-run files of an experiment (no checkpoints, no re-derivable splits) into
# the repo, so the report can be rebuilt and a later machine can resume the grid where it stopped:
#   bash scripts/snapshot_runs.sh runs/evidence-pretrained-cpu docs/results/pretrained-cpu/grid
#   cp -r docs/results/pretrained-cpu/grid/. runs/evidence-pretrained-cpu/   # then: activesyn experiment ...
# (a restored run is `done` in its state.json, so `activesyn experiment` skips it.)
set -euo pipefail
src="$1"; dst="$2"
for state in "$src"/*/*/state.json; do
  run="$(dirname "$state")"
  python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("done") else 1)' "$state" || continue
  rel="${run#"$src"/}"
  mkdir -p "$dst/$rel"
  for f in config.yaml state.json metrics.jsonl scores.jsonl synthetic.jsonl charged.jsonl; do
    [ -f "$run/$f" ] && cp "$run/$f" "$dst/$rel/$f"
  done
  echo "snapshot: $rel"
done

#!/usr/bin/env bash
# The full tiny text pretraining run: prepare the text corpora (the tiny
# recipe reads the WordNet glosses) and the tokenizer, pretrain configs/text.py:tiny, then print
# the loss and target_var trajectory.
#
#   scripts/tiny_text_pretraining.sh [WORKDIR] [--config.key=value ...]
#
# Rerunning resumes from WORKDIR (default workdirs/text_tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-workdirs/text_tiny}
shift || true
python scripts/prepare_data.py text
python train.py --config configs/text.py:tiny --workdir "$WORKDIR" "$@"
python - "$WORKDIR" <<'EOF'
import json
import sys

from configs import text

logged = [json.loads(line) for line in open(f'{sys.argv[1]}/metrics.jsonl')]
for m in logged:
  print(f"step {m['step']:4d}  loss {m['loss']:.4f}  target_var {m['target_var']:.4f}  "
        f"pred_var {m['pred_var']:.4f}")
first, last = logged[0], logged[-1]
min_var = min(m['target_var'] for m in logged)
print(f"loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} "
      f"(step {last['step']}); min target_var {min_var:.4f} "
      f"(threshold {text.get_config('tiny').min_target_var})")
EOF

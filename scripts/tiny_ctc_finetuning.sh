#!/usr/bin/env bash
# The tiny CTC recipe on spoken digit strings: pretrain configs/audio.py:tiny
# (scripts/tiny_audio_pretraining.sh), fine-tune spoken-digit classification from it
# (configs/finetune_audio.py:digits, 600 steps), then CTC from that (:ctc, 1500 steps: 200 train
# the new head only), and print the character error rates of greedy decoding on the validation
# and test voices, which training never hears. Rerunning resumes (or just summarizes) each stage.
#
#   bash scripts/tiny_ctc_finetuning.sh [ROOT]     # workdirs ROOT/{pretrain,digits,ctc}
#
# Chance on the test split: CER 0.88 (random digits of the true length), 1.0 (no output).
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-workdirs/ctc_tiny}

bash scripts/tiny_audio_pretraining.sh "$root/pretrain"
python train.py --config configs/finetune_audio.py:digits --workdir "$root/digits" \
    --config.init_from="$root/pretrain"
python train.py --config configs/finetune_audio.py:ctc --workdir "$root/ctc" \
    --config.init_from="$root/digits"
python - "$root" <<'PY'
import json, sys
for stage, score in (('digits', 'accuracy'), ('ctc', 'cer')):
  with open(f'{sys.argv[1]}/{stage}/metrics.jsonl') as f:
    last = [json.loads(line) for line in f][-1]
  print(f'{stage} step {last["step"]}: validation {score} {last["validation_" + score]:.3f}, '
        f'test {score} {last["test_" + score]:.3f}')
PY

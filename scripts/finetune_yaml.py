"""Generate config/finetune.yaml from the fine-tuning option table (hr_depth_ros.core.training.options).

    python scripts/finetune_yaml.py          # print it
    python scripts/finetune_yaml.py --write  # rewrite config/finetune.yaml

test/test_finetune_options.py fails when the file and the table drift apart.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
YAML_FILE = REPO / 'config' / 'finetune.yaml'


def finetune_yaml() -> str:
    from hr_depth_ros.core.training.options import yaml_text
    from hr_depth_ros.core.training.trainer import TrainingConfig

    return yaml_text(TrainingConfig)


def main() -> int:
    text = finetune_yaml()
    if '--write' in sys.argv[1:]:
        YAML_FILE.write_text(text)
        print(f'updated {YAML_FILE}')
    else:
        print(text, end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Generate the README's parameter tables and config/depth.yaml from the code: the depth node's option table
(hr_depth_ros.core.depth_options.NodeConfig) and the fine-tuning options (the option table of
hr_depth_ros.core.training.trainer.TrainingConfig).

    python scripts/readme_tables.py          # print the tables
    python scripts/readme_tables.py --write  # rewrite them in README.md between their markers, and config/depth.yaml

test/test_readme.py and test/test_launch.py fail when the README, the YAML and the code drift apart.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MARKER = 'depth-parameters'
FINETUNE_MARKER = 'finetune-options'
DEPTH_YAML = REPO / 'config' / 'depth.yaml'


def depth_parameter_table() -> str:
    """Markdown table of the depth node's parameters: name, command-line flag, default, description."""
    from hr_depth_ros.core.depth_options import depth_markdown_table

    return depth_markdown_table()


def depth_yaml() -> str:
    """config/depth.yaml: the depth node's defaults."""
    from hr_depth_ros.core.depth_options import depth_yaml as text

    return text()


def finetune_option_table() -> str:
    """Markdown table of the fine-tuning options: node parameter, CLI flag, default, description."""
    from hr_depth_ros.core.training.options import markdown_table
    from hr_depth_ros.core.training.trainer import TrainingConfig

    return markdown_table(TrainingConfig)


def replace_block(text: str, marker: str, body: str) -> str:
    pattern = re.compile(rf'(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)', re.S)
    if not pattern.search(text):
        raise SystemExit(f'README.md has no <!-- {marker}:start/end --> markers')
    return pattern.sub(lambda m: m.group(1) + body + '\n' + m.group(2), text)


def readme_block(text: str, marker: str) -> str:
    match = re.search(rf'<!-- {marker}:start -->\n(.*?)<!-- {marker}:end -->', text, re.S)
    return match.group(1).rstrip('\n') if match else ''


def main() -> int:
    tables = {MARKER: depth_parameter_table(), FINETUNE_MARKER: finetune_option_table()}
    if '--write' in sys.argv[1:]:
        readme = REPO / 'README.md'
        text = readme.read_text()
        for marker, table in tables.items():
            text = replace_block(text, marker, table)
        readme.write_text(text)
        DEPTH_YAML.write_text(depth_yaml())
        print(f'updated {readme} and {DEPTH_YAML}')
    else:
        print('\n\n'.join(tables.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())

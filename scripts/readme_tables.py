"""Generate the README's parameter tables from the code: the depth node's (hr_depth_ros.core.depth_engine.PARAMETERS)
and the fine-tuning options (the option table of hr_depth_ros.core.training.trainer.TrainingConfig) and the
online adaptation parameters (hr_depth_ros.core.adaptation.ADAPTATION_PARAMETERS).

    python scripts/readme_tables.py          # print the tables
    python scripts/readme_tables.py --write  # rewrite them in README.md between their markers

test/test_readme.py fails when the README and the code drift apart.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MARKER = 'depth-parameters'
FINETUNE_MARKER = 'finetune-options'
ADAPT_MARKER = 'adapt-parameters'


def format_default(value: object) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return f'`"{value}"`' if value == '' else f'`{value}`'
    return f'`{value}`'


def depth_parameter_table(specs: tuple | None = None) -> str:
    """Markdown table of the depth node's parameters (default: PARAMETERS): name, default, description."""
    from hr_depth_ros.core.depth_engine import PARAMETERS

    rows = ['| parameter | default | description |', '|---|---|---|']
    for spec in PARAMETERS if specs is None else specs:
        description = spec.description.replace('|', '\\|')
        if spec.choices:
            description += f' (one of {", ".join(spec.choices)})'
        rows.append(f'| `{spec.name}` | {format_default(spec.default)} | {description} |')
    return '\n'.join(rows)


def adapt_parameter_table() -> str:
    """Markdown table of the depth node's online adaptation parameters (adapt*)."""
    from hr_depth_ros.core.adaptation import ADAPTATION_PARAMETERS

    return depth_parameter_table(ADAPTATION_PARAMETERS)


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
    tables = {MARKER: depth_parameter_table(), FINETUNE_MARKER: finetune_option_table(),
              ADAPT_MARKER: adapt_parameter_table()}
    if '--write' in sys.argv[1:]:
        readme = REPO / 'README.md'
        text = readme.read_text()
        for marker, table in tables.items():
            text = replace_block(text, marker, table)
        readme.write_text(text)
        print(f'updated {readme}')
    else:
        print('\n\n'.join(tables.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""The README's tables are checked against the code, and its commands exist (test_launch runs its ros2
commands and checks its topic table against a running node)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_tables_script():
    spec = importlib.util.spec_from_file_location('readme_tables', REPO / 'scripts' / 'readme_tables.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_table_matches_the_node():
    tables = load_tables_script()
    readme = (REPO / 'README.md').read_text()
    assert tables.readme_block(readme, tables.MARKER) == tables.depth_parameter_table(), (
        'README parameter table is out of date: run python scripts/readme_tables.py --write')


def test_finetune_option_table_matches_the_code():
    tables = load_tables_script()
    readme = (REPO / 'README.md').read_text()
    assert tables.readme_block(readme, tables.FINETUNE_MARKER) == tables.finetune_option_table(), (
        'README fine-tuning option table is out of date: run python scripts/readme_tables.py --write')


def test_readme_commands_exist():
    readme = (REPO / 'README.md').read_text()
    for script in ('scripts/demo.sh', 'scripts/test.sh'):
        assert f'./{script}' in readme and (REPO / script).is_file()
    assert 'scripts/test.sh' in (REPO / '.ci' / 'run').read_text()
    for image in re.findall(r'!\[[^\]]*\]\(([^)]+)\)', readme):
        assert (REPO / image).is_file(), f'README shows {image}, which is missing'

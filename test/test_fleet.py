"""Fleet-scale fine-tuning (issue 14): many bags per --bag, per-bag summaries."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hr_depth_ros.make_synthetic_bag import write_synthetic_bag
from hr_depth_ros.training.data import DataConfig, DataError, prepare_data
from hr_depth_ros.training.sources import bags_in, expand_bags

W, H = 128, 64


@pytest.fixture(scope='module')
def fleet(tmp_path_factory) -> Path:
    """A folder of three bags: two drives (one nested a level down) and a parked robot (no motion)."""
    root = tmp_path_factory.mktemp('fleet')
    (root / 'robot2').mkdir()
    write_synthetic_bag(root / 'robot1_drive', frames=16, width=256, height=96, seed=1)
    write_synthetic_bag(root / 'robot2' / 'drive', frames=20, width=256, height=96, seed=2, storage='sqlite3')
    write_synthetic_bag(root / 'robot3_parked', frames=12, width=256, height=96, seed=3, speed=0.0,
                        fps=1000.0, tf_rate=3000.0, tf_offset_s=0.0)
    (root / '.hr_depth_frames-old').mkdir()  # a hidden cache folder is never a bag
    (root / '.hr_depth_frames-old' / 'metadata.yaml').write_text('')
    return root


def test_folders_patterns_and_files_expand_to_bags(fleet, tmp_path):
    expected = [fleet / 'robot1_drive', fleet / 'robot2' / 'drive', fleet / 'robot3_parked']
    assert bags_in(fleet) == expected
    assert expand_bags([fleet]) == expected
    assert expand_bags([str(fleet / 'robot*')]) == expected
    # A bag named twice is read once; argument order is kept.
    assert expand_bags([fleet / 'robot3_parked', str(fleet / 'robot*')]) == [expected[2], *expected[:2]]
    ros1 = tmp_path / 'old.bag'
    ros1.write_bytes(b'#ROSBAG V2.0\n')
    assert expand_bags([tmp_path]) == [ros1]
    assert expand_bags([tmp_path / 'missing']) == [tmp_path / 'missing']  # the reader names it
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='holds no bag'):
        expand_bags([tmp_path / 'empty'])
    with pytest.raises(ValueError, match='matches no bag'):
        expand_bags([str(tmp_path / 'nothing*')])
    with pytest.raises(DataError, match=f'{tmp_path / "empty"}.*holds no bag'):
        prepare_data(DataConfig(bags=[tmp_path / 'empty'], width=W, height=H))


def test_a_folder_of_bags_keeps_bags_apart_and_reports_each(fleet):
    data = prepare_data(DataConfig(bags=[fleet], width=W, height=H, val_fraction=0.2, val_block_frames=4))
    try:
        store = data.store
        assert store.bags == [str(fleet / 'robot1_drive'), str(fleet / 'robot2' / 'drive'),
                              str(fleet / 'robot3_parked')]
        assert np.bincount(store.segment).tolist() == [16, 20, 12]
        for sample in data.train + data.val:
            assert len({int(store.segment[i]) for i in sample}) == 1  # no triplet spans two bags
        reports = data.bag_reports
        assert [r.frames for r in reports] == [16, 20, 12]
        assert sum(r.train for r in reports) == len(data.train) and sum(r.val for r in reports) == len(data.val)
        assert reports[2].train == reports[2].val == 0 and reports[2].dropped_no_motion == 12 - 2
        assert reports[0].train > 0 and reports[1].train > 0
        lines = data.bag_summaries()
        assert len(lines) == 3 and lines[2].startswith(f'bag {fleet / "robot3_parked"}: 12 frames -> 0 training')
        assert '10 without camera motion' in lines[2]
        for field in ('dropped_edges', 'dropped_gap', 'dropped_no_motion', 'dropped_no_pose', 'dropped_split'):
            assert sum(getattr(r, field) for r in reports) == getattr(data.report, field)
    finally:
        data.close()

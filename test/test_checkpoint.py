"""Checkpoint folders: architecture detection, clear errors, atomic writes, metadata round trip."""
from __future__ import annotations

import json

import pytest
import torch

from hr_depth_ros.core import checkpoint as ckpt
from hr_depth_ros.core.checkpoint import (CheckpointError, detect_architecture, load_depth_checkpoint,
                                          load_extra_state, save_depth_checkpoint)
from hr_depth_ros.core.networks import ARCHITECTURES, build_depth_model


@pytest.fixture(scope='module')
def lite_models():
    torch.manual_seed(1)
    return build_depth_model('lite_hr_depth')


@pytest.mark.parametrize('arch', ARCHITECTURES)
def test_architecture_recognised_from_keys(arch):
    encoder, decoder = build_depth_model(arch)
    assert detect_architecture(encoder.state_dict(), decoder.state_dict()) == arch


def test_round_trip_with_metadata_and_extra_state(tmp_path, lite_models):
    encoder, decoder = lite_models
    folder = save_depth_checkpoint(tmp_path / 'ck', encoder, decoder, arch='lite_hr_depth', height=96, width=320,
                                   metadata={'step': 7, 'intrinsics': [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
                                   extra_state={'adam.pth': {'step': torch.tensor(7)}})
    loaded = load_depth_checkpoint(folder)
    assert (loaded.arch, loaded.height, loaded.width, loaded.use_stereo) == ('lite_hr_depth', 96, 320, False)
    assert loaded.metadata['step'] == 7 and loaded.metadata['arch'] == 'lite_hr_depth'
    assert not loaded.encoder.training and not loaded.decoder.training
    for ours, theirs in ((encoder, loaded.encoder), (decoder, loaded.decoder)):
        for key, value in ours.state_dict().items():
            assert torch.equal(value, theirs.state_dict()[key]), key
    assert int(load_extra_state(folder, 'adam.pth')['step']) == 7
    # The authors' format: encoder.pth carries height/width/use_stereo, depth.pth only weights.
    raw = torch.load(folder / 'encoder.pth', weights_only=True)
    assert raw['height'] == 96 and raw['width'] == 320 and raw['use_stereo'] is False
    assert set(torch.load(folder / 'depth.pth', weights_only=True)) == set(decoder.state_dict())


def test_missing_folder_and_files_are_named(tmp_path, lite_models):
    with pytest.raises(CheckpointError, match='does not exist'):
        load_depth_checkpoint(tmp_path / 'nowhere')
    folder = save_depth_checkpoint(tmp_path / 'ck', *lite_models, arch='lite_hr_depth', height=96, width=320)
    (folder / 'depth.pth').unlink()
    with pytest.raises(CheckpointError, match=r'depth\.pth: file missing'):
        load_depth_checkpoint(folder)


def test_truncated_file_is_reported(tmp_path, lite_models):
    folder = save_depth_checkpoint(tmp_path / 'ck', *lite_models, arch='lite_hr_depth', height=96, width=320)
    data = (folder / 'encoder.pth').read_bytes()
    (folder / 'encoder.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r'encoder\.pth'):
        load_depth_checkpoint(folder)


def test_mismatched_keys_and_shapes_are_listed(tmp_path, lite_models):
    encoder, decoder = lite_models
    folder = save_depth_checkpoint(tmp_path / 'ck', encoder, decoder, arch='lite_hr_depth', height=96, width=320)
    state = torch.load(folder / 'depth.pth', weights_only=True)
    del state['decoder.3.conv.conv.bias']
    state['convs.X_04_Conv_1.conv.conv.weight'] = torch.zeros(1, 2, 3, 3)
    state['decoder.99.weight'] = torch.zeros(1)
    torch.save(state, folder / 'depth.pth')
    with pytest.raises(CheckpointError) as error:
        load_depth_checkpoint(folder)
    message = str(error.value)
    assert 'depth.pth' in message
    assert 'missing keys: decoder.3.conv.conv.bias' in message
    assert 'unexpected keys: decoder.99.weight' in message
    assert 'convs.X_04_Conv_1.conv.conv.weight (1, 2, 3, 3)' in message


def test_unknown_architecture_and_missing_size(tmp_path, lite_models):
    folder = tmp_path / 'odd'
    folder.mkdir()
    torch.save({'height': 1, 'width': 2, 'something.weight': torch.zeros(1)}, folder / 'encoder.pth')
    torch.save({'x': torch.zeros(1)}, folder / 'depth.pth')
    with pytest.raises(CheckpointError, match='something.weight'):
        load_depth_checkpoint(folder)
    good = save_depth_checkpoint(tmp_path / 'ck', *lite_models, arch='lite_hr_depth', height=96, width=320)
    state = torch.load(good / 'encoder.pth', weights_only=True)
    del state['height']
    torch.save(state, good / 'encoder.pth')
    with pytest.raises(CheckpointError, match='missing keys height'):
        load_depth_checkpoint(good)


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, lite_models, monkeypatch):
    encoder, decoder = lite_models
    folder = save_depth_checkpoint(tmp_path / 'ck', encoder, decoder, arch='lite_hr_depth', height=96, width=320,
                                   metadata={'step': 1})
    calls = {'n': 0}
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 2:
            raise OSError('disk full (simulated)')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, 'save', failing_save)
    with pytest.raises(OSError, match='simulated'):
        save_depth_checkpoint(folder, encoder, decoder, arch='lite_hr_depth', height=96, width=320,
                              metadata={'step': 2})
    monkeypatch.undo()
    assert load_depth_checkpoint(folder).metadata['step'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ck']  # no temporary folders left behind
    assert json.loads((folder / 'hr_depth_ros.json').read_text())['step'] == 1


def test_half_precision_storage_loads_into_fp32_networks(tmp_path, lite_models):
    encoder, decoder = lite_models
    full = save_depth_checkpoint(tmp_path / 'fp32', encoder, decoder, arch='lite_hr_depth', height=96, width=320)
    half = save_depth_checkpoint(tmp_path / 'fp16', encoder, decoder, arch='lite_hr_depth', height=96, width=320,
                                 weights_dtype=torch.float16)
    size = lambda folder: sum(p.stat().st_size for p in folder.iterdir())  # noqa: E731
    assert size(half) < 0.6 * size(full)
    loaded = load_depth_checkpoint(half)
    weight = loaded.decoder.state_dict()['convs.X_04_Conv_1.conv.conv.weight']
    assert weight.dtype == torch.float32
    assert torch.allclose(weight, decoder.state_dict()['convs.X_04_Conv_1.conv.conv.weight'], atol=1e-3)


@pytest.mark.parametrize('value, message', [(0, 'height=0 is not a network input size'),
                                            (100000, 'height=100000 is not a network input size'),
                                            (100, 'height=100 is not a network input size'),
                                            ('abc', "height must be an integer, got 'abc'"),
                                            (True, 'height must be an integer')])
def test_absurd_network_sizes_are_refused_naming_the_file(tmp_path, lite_models, value, message):
    good = save_depth_checkpoint(tmp_path / 'ck', *lite_models, arch='lite_hr_depth', height=96, width=320)
    state = torch.load(good / 'encoder.pth', weights_only=True)
    state['height'] = value
    torch.save(state, good / 'encoder.pth')
    with pytest.raises(CheckpointError, match=message) as info:
        load_depth_checkpoint(good)
    assert str(good / 'encoder.pth') in str(info.value)


@pytest.mark.parametrize('file', ['encoder.pth', 'depth.pth'])
def test_non_finite_weights_are_refused_naming_the_file(tmp_path, lite_models, file):
    good = save_depth_checkpoint(tmp_path / 'ck', *lite_models, arch='lite_hr_depth', height=96, width=320)
    state = torch.load(good / file, weights_only=True)
    key = next(k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    state[key] = torch.full_like(state[key], float('nan'))
    torch.save(state, good / file)
    with pytest.raises(CheckpointError, match='NaN') as info:
        load_depth_checkpoint(good)
    assert str(good / file) in str(info.value) and key in str(info.value)


def test_predict_and_trainer_init_refuse_a_nan_checkpoint_in_one_line(tmp_path, lite_models, capsys):
    from hr_depth_ros.tools import predict

    bad = save_depth_checkpoint(tmp_path / 'nan', *lite_models, arch='lite_hr_depth', height=96, width=320)
    state = torch.load(bad / 'depth.pth', weights_only=True)
    state = {k: torch.full_like(v, float('inf')) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, bad / 'depth.pth')
    image = tmp_path / 'frame.png'
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.zeros((96, 320, 3), np.uint8))
    assert predict.main([str(image), '--weights', str(bad), '--device', 'cpu', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'NaN or inf' in err and str(bad / 'depth.pth') in err
    assert not (tmp_path / 'frame_disp.npy').exists()
    from hr_depth_ros.core.training.trainer import Trainer, TrainingConfig

    config = TrainingConfig(bags=['unused'], output=str(tmp_path / 'out'), init=str(bad), steps=1, device='cpu')
    with pytest.raises(CheckpointError, match='NaN or inf'):
        Trainer(config)._build_models()


def test_the_depth_range_a_checkpoint_records_is_what_consumers_use(lite_checkpoint, tmp_path):
    """hr_depth_ros.json's depth_range (the disp_to_depth range the network was trained with) is used by
    the inference engine unless a range is given; malformed ranges fall back to monodepth2's 0.1-100."""
    import json
    import shutil

    import numpy as np

    from hr_depth_ros.core.checkpoint import DEFAULT_DEPTH_RANGE, depth_range_of
    from hr_depth_ros.core.inference import DepthEstimator

    folder = tmp_path / 'ranged'
    shutil.copytree(lite_checkpoint, folder)
    meta_path = folder / 'hr_depth_ros.json'
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta_path.write_text(json.dumps({**meta, 'depth_range': [0.05, 50.0]}))
    ranged = DepthEstimator(folder, device='cpu', backend='torch')
    assert (ranged.min_depth, ranged.max_depth) == (0.05, 50.0)
    given = DepthEstimator(folder, device='cpu', backend='torch', min_depth=0.1, max_depth=100.0)
    disparity = np.full((4, 4), 0.5, np.float32)
    assert ranged.disparity_to_depth(disparity)[0, 0] < 0.6 * given.disparity_to_depth(disparity)[0, 0]
    assert depth_range_of({'depth_range': [5, 1]}) is None and depth_range_of({'depth_range': 'x'}) is None
    assert DepthEstimator(lite_checkpoint, device='cpu', backend='torch').min_depth == DEFAULT_DEPTH_RANGE[0]

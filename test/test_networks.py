"""Networks: parameter counts from the paper, output shapes, and the authors' outputs (golden data)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from golden_weights import NETWORK_OUTPUT_ATOL, deterministic_state_dict, golden_input, layout_of, output_figures
from hr_depth_ros.core.checkpoint import load_depth_checkpoint
from hr_depth_ros.core.networks import ARCHITECTURES, build_depth_model, build_pose_model, count_parameters

GOLDEN = Path(__file__).resolve().parent / 'data' / 'golden'


@pytest.mark.parametrize('arch, encoder_m, decoder_m', [
    ('hr_depth', 11.69, 2.92),         # HR-Depth paper / README: 14.61M with ResNet-18
    ('lite_hr_depth', 2.82, 0.30),     # Lite-HR-Depth: 3.1M
    ('monodepth2', 11.69, 3.15),       # monodepth2 ResNet-18
])
def test_parameter_counts(arch, encoder_m, decoder_m):
    encoder, decoder = build_depth_model(arch)
    assert round(count_parameters(encoder) / 1e6, 2) == encoder_m
    assert round(count_parameters(decoder) / 1e6, 2) == decoder_m


@pytest.mark.parametrize('arch', ARCHITECTURES)
def test_four_sigmoid_scales(arch):
    encoder, decoder = build_depth_model(arch)
    with torch.no_grad():
        outputs = decoder(encoder(torch.rand(1, 3, 64, 128)))
    assert sorted(outputs) == [('disp', s) for s in range(4)]
    for s in range(4):
        assert outputs[('disp', s)].shape == (1, 1, 64 >> s, 128 >> s)
        assert ((outputs[('disp', s)] >= 0) & (outputs[('disp', s)] <= 1)).all()


def test_pose_network_shapes_and_small_initial_motion():
    encoder, decoder = build_pose_model()
    assert encoder.encoder.conv1.in_channels == 6
    with torch.no_grad():
        axisangle, translation = decoder([encoder(torch.rand(2, 6, 64, 128))])
    assert axisangle.shape == translation.shape == (2, 2, 1, 3)
    assert axisangle.abs().max() < 0.1  # the 0.01 output scaling of monodepth2


def test_local_weights_only(tmp_path):
    with pytest.raises(FileNotFoundError, match='never downloads'):
        build_depth_model('lite_hr_depth', encoder_weights_path=tmp_path / 'mobilenetv3.pth')
    # A torchvision-layout ResNet-18 state dict from a local file loads, and for the pose net
    # conv1 is repeated over the two frames and halved (monodepth2).
    from torchvision.models import resnet18
    reference = resnet18(weights=None).state_dict()
    torch.save(reference, tmp_path / 'resnet18.pth')
    encoder, _ = build_depth_model('hr_depth', encoder_weights_path=tmp_path / 'resnet18.pth')
    assert torch.equal(encoder.encoder.conv1.weight, reference['conv1.weight'])
    pose_encoder, _ = build_pose_model(weights_path=tmp_path / 'resnet18.pth')
    assert torch.allclose(pose_encoder.encoder.conv1.weight[:, 3:], reference['conv1.weight'] / 2)


def _golden_cases():
    for path in sorted(GOLDEN.glob('*.json')):
        record = json.loads(path.read_text())
        for resolution in record['outputs']:
            yield pytest.param(record, resolution, id=f'{record["arch"]}-{resolution}')


def write_released_folder(folder: Path, record: dict, height: int, width: int) -> Path:
    """A checkpoint folder exactly as the authors release them, filled with golden weights."""
    folder.mkdir(parents=True)
    encoder_state = deterministic_state_dict(record['encoder_layout'])
    encoder_state.update(height=height, width=width, use_stereo=False)
    torch.save(encoder_state, folder / 'encoder.pth')
    torch.save(deterministic_state_dict(record['decoder_layout']), folder / 'depth.pth')
    return folder


@pytest.mark.parametrize('record, resolution', list(_golden_cases()))
def test_same_output_as_the_authors_code(tmp_path, record, resolution):
    width, height = (int(v) for v in resolution.split('x'))
    folder = write_released_folder(tmp_path / record['arch'], record, height, width)
    checkpoint = load_depth_checkpoint(folder)
    assert checkpoint.arch == record['arch']
    # Same keys in the same order: the folders load unchanged, both ways.
    assert [k for k, _, _ in layout_of(checkpoint.decoder)] == [k for k, _, _ in record['decoder_layout']]
    assert [k for k, _, _ in layout_of(checkpoint.encoder)] == [k for k, _, _ in record['encoder_layout']]
    with torch.no_grad():
        outputs = checkpoint.decoder(checkpoint.encoder(golden_input(height, width)))
    ours = output_figures({s: outputs[('disp', s)] for s in range(4)})
    for scale, expected in record['outputs'][resolution].items():
        got = ours[scale]
        assert got['shape'] == expected['shape']
        assert got['mean'] == pytest.approx(expected['mean'], abs=NETWORK_OUTPUT_ATOL)
        assert got['std'] == pytest.approx(expected['std'], abs=NETWORK_OUTPUT_ATOL)
        diff = (torch.tensor(got['grid']) - torch.tensor(expected['grid'])).abs().max().item()
        assert diff < NETWORK_OUTPUT_ATOL, f'scale {scale}: max difference {diff} from the authors\' output'

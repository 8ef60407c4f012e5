"""Fine-tuning loop and CLI: loss decreases, checkpoints load, resume continues, bad input writes nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hr_depth_ros.tools import finetune
from hr_depth_ros.core.checkpoint import load_depth_checkpoint, load_extra_state
from hr_depth_ros.core.inference import DepthEstimator
from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag
from hr_depth_ros.core.training.data import TripletDataset
from hr_depth_ros.core.training.trainer import Trainer, TrainingConfig, TrainingError

W, H = 128, 64
COMMON = ['--width', str(W), '--height', str(H), '--batch-size', '2', '--device', 'cpu', '--quiet']


@pytest.fixture(scope='module')
def bag(tmp_path_factory) -> Path:
    return write_synthetic_bag(tmp_path_factory.mktemp('trainer') / 'drive', frames=24, width=256, height=96, seed=5)


@pytest.fixture(scope='module')
def trained(bag, tmp_path_factory):
    """3 steps, saved at every step, then resumed to 5 (the interrupted-run scenario)."""
    output = tmp_path_factory.mktemp('run') / 'out'
    args = ['--bag', str(bag), '--output', str(output), '--gt-depth-topic', '/camera/depth_gt',
            '--save-every', '1', '--val-every', '3', *COMMON]
    assert finetune.main([*args, '--steps', '3']) == 0
    first = json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())
    first_adam = load_extra_state(output / 'latest', 'adam.pth')
    assert finetune.main([*args, '--steps', '5', '--resume']) == 0
    return output, first, first_adam


def test_overfits_a_fixed_batch(bag, tmp_path):
    config = TrainingConfig(bags=[str(bag)], output=str(tmp_path / 'out'), width=W, height=H, steps=1, batch_size=2,
                            device='cpu', lr=5e-4, val_fraction=0.0)
    trainer = Trainer(config)
    torch.manual_seed(0)
    from hr_depth_ros.core.training.data import prepare_data
    data = prepare_data(config.data_config())
    try:
        models = trainer._build_models()
        batch = torch.utils.data.default_collate([TripletDataset(data.store, data.train)[i] for i in (0, 5)])
        params = [p for m in models.trainable() for p in m.parameters()]
        optimizer = torch.optim.Adam(params, lr=config.lr)
        losses = []
        for _ in range(25):
            loss, _ = trainer._losses(models, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        data.close()
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


@pytest.mark.parametrize('loss_scales', [1, 4])
def test_loss_scales_chooses_the_decoder_outputs_that_learn(bag, tmp_path, loss_scales):
    """``loss_scales`` N: the loss sees the N finest disparity outputs and no others (the online worker uses 1)."""
    config = TrainingConfig(bags=[str(bag)], output=str(tmp_path / 'out'), width=W, height=H, steps=1, batch_size=2,
                            device='cpu', val_fraction=0.0, loss_scales=loss_scales)
    trainer = Trainer(config)
    from hr_depth_ros.core.training.data import prepare_data
    data = prepare_data(config.data_config())
    try:
        models = trainer._build_models()
        batch = torch.utils.data.default_collate([TripletDataset(data.store, data.train)[i] for i in (0, 5)])
        torch.manual_seed(0)
        outputs = {('disp', s): torch.rand(2, 1, H >> s, W >> s).mul_(0.5).add_(0.1).requires_grad_()
                   for s in range(4)}
        loss, _ = trainer._losses(models, batch, outputs=outputs)
        loss.backward()
    finally:
        data.close()
    used = [s for s in range(4) if outputs[('disp', s)].grad is not None and outputs[('disp', s)].grad.abs().sum() > 0]
    assert used == list(range(loss_scales))
    with pytest.raises(TrainingError, match='loss_scales'):
        TrainingConfig(bags=[str(bag)], output=str(tmp_path / 'x'), steps=1, loss_scales=5).validate()


def test_checkpoint_has_metadata_and_loads(trained):
    output, first, _ = trained
    assert first['step'] == 3
    latest = output / 'latest'
    meta = json.loads((latest / 'hr_depth_ros.json').read_text())
    assert meta['step'] == 5 and meta['arch'] == 'lite_hr_depth' and meta['resolution'] == [W, H]
    assert meta['topics']['image'] == '/camera/image_raw' and len(meta['bags']) == 1
    assert np.array(meta['intrinsics']['K']).shape == (3, 3) and 0 < meta['K_normalized'][0][0] < 2
    # The depth node understands the intrinsics the trainer stores.
    from hr_depth_ros.ros.depth_node import checkpoint_intrinsics
    assert checkpoint_intrinsics(meta) is not None
    checkpoint = load_depth_checkpoint(latest)
    assert (checkpoint.arch, checkpoint.width, checkpoint.height) == ('lite_hr_depth', W, H)
    depth = DepthEstimator(checkpoint, device='cpu').predict_depth(np.zeros((96, 256, 3), np.uint8))
    assert depth.shape == (H, W) and np.isfinite(depth).all()
    for name in ('pose_encoder.pth', 'pose.pth', 'adam.pth'):
        assert (latest / name).is_file()
    assert (output / 'best' / 'encoder.pth').is_file()


def test_resume_continues_step_and_optimizer(trained):
    output, _, first_adam = trained
    state = load_extra_state(output / 'latest', 'adam.pth')
    assert first_adam['step'] == 3 and state['step'] == 5
    adam_steps = {int(s['step']) for s in state['optimizer']['state'].values()}
    assert adam_steps == {5}  # the Adam moments were restored, not restarted (would be 2)
    rows = list(csv.DictReader(open(output / 'metrics.csv')))
    assert [int(r['step']) for r in rows if r['split'] == 'val'] == [3, 5]
    assert all(r['abs_rel'] and float(r['abs_rel']) > 0 for r in rows if r['split'] == 'val')


def test_nan_weights_are_never_saved(trained, bag):
    output, _, _ = trained
    before = (output / 'latest' / 'encoder.pth').read_bytes()
    config = TrainingConfig(bags=[str(bag)], output=str(output), width=W, height=H, steps=1, device='cpu')
    trainer = Trainer(config)
    models = trainer._build_models()
    with torch.no_grad():
        next(models.decoder.parameters()).fill_(float('nan'))
    messages = []
    trainer.callback = messages.append
    assert trainer._save(models, None, None, None, None, 'latest') is None
    assert (output / 'latest' / 'encoder.pth').read_bytes() == before
    assert 'NaN' in messages[-1]['message']


@pytest.mark.parametrize('case', ['missing_topic', 'corrupt_bag', 'two_frames', 'resume_nothing', 'bad_size'])
def test_bad_inputs_exit_2_and_write_nothing(case, bag, tmp_path, capsys):
    output = tmp_path / 'out'
    args = ['--bag', str(bag), '--output', str(output), '--steps', '2', *COMMON]
    expected = {'missing_topic': '/no/such/topic', 'corrupt_bag': 'broken', 'two_frames': 'no consecutive frames',
                'resume_nothing': 'cannot resume', 'bad_size': 'multiples of 32'}[case]
    if case == 'missing_topic':
        args += ['--image-topic', '/no/such/topic']
    elif case == 'corrupt_bag':
        broken = tmp_path / 'broken'
        broken.mkdir()
        (broken / 'metadata.yaml').write_text('not: a bag\n')
        args[1] = str(broken)
    elif case == 'two_frames':
        args[1] = str(write_synthetic_bag(tmp_path / 'two', frames=2, width=64, height=32))
    elif case == 'resume_nothing':
        args.append('--resume')
    else:
        args[args.index('--width') + 1] = '100'
    assert finetune.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('finetune: error:') and expected in err and err.count('\n') == 1
    assert not output.exists()


def test_pose_warmup_leaves_the_depth_network_untouched(bag, trained, tmp_path):
    """--init from a depth-only checkpoint with --pose-warmup-steps: depth weights stay, pose learns."""
    output, _, _ = trained
    start = tmp_path / 'depth_only'
    source = load_depth_checkpoint(output / 'latest')
    from hr_depth_ros.core.checkpoint import save_depth_checkpoint
    save_depth_checkpoint(start, source.encoder, source.decoder, arch=source.arch, height=H, width=W)
    run = tmp_path / 'warm'
    assert finetune.main(['--bag', str(bag), '--output', str(run), '--init', str(start), '--steps', '2',
                          '--pose-warmup-steps', '2', '--pose-source', 'net', *COMMON]) == 0
    after = load_depth_checkpoint(run / 'latest')
    for name, module in (('encoder', after.encoder), ('decoder', after.decoder)):
        reference = getattr(source, name).state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, reference[key]), f'{name} {key} changed during the pose warm-up'
    pose = load_extra_state(run / 'latest', 'pose.pth')
    fresh_pose = load_extra_state(output / 'latest', 'pose.pth')  # any other pose net differs anyway
    assert any(not torch.equal(pose[k], fresh_pose[k]) for k in pose)


def test_freeze_batch_norm_keeps_running_statistics():
    from hr_depth_ros.core.networks import build_depth_model
    from hr_depth_ros.core.training.trainer import freeze_batch_norm
    encoder, _ = build_depth_model('lite_hr_depth')
    encoder.train()
    freeze_batch_norm(encoder)
    before = {k: v.clone() for k, v in encoder.state_dict().items() if 'running_mean' in k}
    encoder(torch.rand(2, 3, 64, 128))
    after = encoder.state_dict()
    assert before and all(torch.equal(value, after[key]) for key, value in before.items())
    assert encoder.training  # only the BN layers are in eval mode

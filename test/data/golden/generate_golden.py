"""How the golden figures were made (run once, by hand; not part of the test suite).

    python test/data/golden/generate_golden.py AUTHORS_DIR MONODEPTH2_DIR

AUTHORS_DIR / MONODEPTH2_DIR: checkouts of shawLyu/HR-Depth and nianticlabs/monodepth2 (their
code is only imported here, never committed). Each model is filled with
test/golden_weights.deterministic_state_dict, put in eval mode and run on golden_input; the
ordered key layout and the output figures are written to <arch>.json beside this script.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # test/
sys.path.insert(0, str(HERE.parents[2] / 'benchmarks'))
from golden_weights import deterministic_state_dict, golden_input, layout_of, output_figures  # noqa: E402
from inference import load_authors_networks  # noqa: E402  (benchmarks/inference.py)

CASES = {  # arch -> (code, encoder factory, decoder factory, output key function, resolutions)
    'hr_depth': ('authors', lambda n: n.ResnetEncoder(18, False),
                 lambda n, e: n.HRDepthDecoder(e.num_ch_enc), lambda s: ('disparity', f'Scale{s}'),
                 [(192, 640), (320, 1024)]),
    'lite_hr_depth': ('authors', lambda n: n.MobileEncoder(pretrained=None),
                      lambda n, e: n.HRDepthDecoder(e.num_ch_enc, mobile_encoder=True),
                      lambda s: ('disparity', f'Scale{s}'), [(192, 640)]),
    'monodepth2': ('monodepth2', lambda n: n.ResnetEncoder(18, False),
                   lambda n, e: n.DepthDecoder(e.num_ch_enc), lambda s: ('disp', s), [(192, 640)]),
}


def main() -> None:
    roots = {'authors': Path(sys.argv[1]), 'monodepth2': Path(sys.argv[2])}
    for arch, (code, make_encoder, make_decoder, key, resolutions) in CASES.items():
        networks = load_authors_networks(roots[code])
        encoder = make_encoder(networks)
        decoder = make_decoder(networks, encoder)
        record = {'arch': arch, 'source': code, 'encoder_layout': layout_of(encoder),
                  'decoder_layout': layout_of(decoder), 'outputs': {}}
        encoder.load_state_dict(deterministic_state_dict(record['encoder_layout']))
        decoder.load_state_dict(deterministic_state_dict(record['decoder_layout']))
        encoder.eval()
        decoder.eval()
        for height, width in resolutions:
            with torch.no_grad():
                outputs = decoder(encoder(golden_input(height, width)))
            record['outputs'][f'{width}x{height}'] = output_figures({s: outputs[key(s)] for s in range(4)})
        (HERE / f'{arch}.json').write_text(json.dumps(record))
        print(arch, 'written')


if __name__ == '__main__':
    main()

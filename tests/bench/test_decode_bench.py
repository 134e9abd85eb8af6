"""`python -m bench.decode` (issue 16, item 1): the decode-cost table, on a clip made here."""

from __future__ import annotations

import json

import pytest

from bench import decode
from tests.support.media import write_h264


@pytest.mark.slow
def test_it_prints_the_cost_of_each_decode_mode_per_camera(tmp_path, capsys):
    clip = write_h264(tmp_path / "camera.mp4", seconds=2.0, fps=25, gop=25)
    out = tmp_path / "decode.json"
    argv = [str(clip), "--no-generated", "--seconds", "1.5", "--modes", "grab,keyframes"]
    assert decode.main([*argv, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| camera.mp4 | 320x240 | 1.00 s | grab |" in table
    assert "| camera.mp4 | 320x240 | 1.00 s | keyframes |" in table
    assert "load average" in table
    rows = json.loads(out.read_text())["rows"]
    grab, keyframes = (row["runs"][0] for row in rows)
    assert grab["decoding"] == "grab" and keyframes["decoding"] == "keyframes"
    assert grab["read_per_s"] > 20 and 0.5 < keyframes["converted_per_s"] < 2
    assert 0 < keyframes["cpu_per_s"] < 1

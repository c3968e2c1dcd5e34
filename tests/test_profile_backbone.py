"""benchmarks/profile_backbone.py: the committed page is the rendering of its JSON, and the cost count is exact."""

import importlib.util
import json

import pytest
import torch
from torch import nn

from .conftest import REPO

SPEC = importlib.util.spec_from_file_location("profile_backbone", REPO / "benchmarks" / "profile_backbone.py")
pb = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pb)


def test_committed_page_matches_results():
    res = json.loads((REPO / pb.OUT).read_text())
    assert (REPO / pb.DOCS).read_text() == pb.render(res, pb.OUT)
    assert pb.main(["--check"]) == 0
    res["rows"][0]["decode_ratio"] += 1.0
    assert pb.render(res, pb.OUT) != (REPO / pb.DOCS).read_text()  # an edited number shows up as drift


def test_conv_gmac_counts_each_layer_kind():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 4, 5, stride=2, padding=2,
                                                                           output_padding=1))
    x = torch.zeros(1, 3, 10, 10)
    conv = 8 * 10 * 10 * 3 * 9  # outputs x inputs per output
    deconv = 8 * 10 * 10 * 4 * 25  # inputs x outputs per input
    assert pb.conv_gmac(net, lambda: net(x)) == pytest.approx((conv + deconv) / 1e9, rel=1e-12)
    lin = nn.Linear(5, 7)
    assert pb.conv_gmac(lin, lambda: lin(torch.zeros(2, 5))) == pytest.approx(2 * 7 * 5 / 1e9, rel=1e-12)

"""BatchNorm folding for inference: same logits, every architecture, unsafe folds refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsseg.inference.fold_bn import fold_batchnorm
from rsseg.inference.runtime import TorchRunner
from rsseg.models.factory import ARCHITECTURES, ModelSpec, build_model


def _with_trained_statistics(net: nn.Module) -> nn.Module:
    """``net`` in eval mode with non-trivial BN statistics and affine parameters."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -0.5, 0.5),
                                          (module.running_var, 0.3, 3.0),
                                          (module.weight, 0.5, 1.5), (module.bias, -0.3, 0.3)):
                    tensor.copy_(torch.empty_like(tensor).uniform_(low, high,
                                                                   generator=generator))
    return net.eval()


def _batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "pixel"])
def test_folded_model_gives_the_same_logits(arch: str) -> None:
    torch.manual_seed(0)
    net = _with_trained_statistics(build_model(ModelSpec(arch=arch, in_channels=4, classes=5)))
    x = torch.randn(2, 4, 64, 64)
    before = _batchnorms(net)
    folded = fold_batchnorm(net, torch.randn(1, 4, 64, 64))
    assert _batchnorms(net) == before  # the original is left as it was
    assert _batchnorms(folded) < before
    with torch.inference_mode():
        expected = net(x)
        assert torch.allclose(folded(x), expected, atol=1e-4 * float(expected.abs().max()))
    # as predict runs it: folded, then channels-last, then called under inference mode
    runner = TorchRunner(net, torch.device("cpu"), "fp32", (4, 64, 64))
    assert torch.allclose(runner(x.numpy()), expected, atol=1e-4 * float(expected.abs().max()))


def test_resnet_unet_has_no_batchnorm_left() -> None:
    net = _with_trained_statistics(build_model(ModelSpec(arch="unet", in_channels=3, classes=2)))
    assert _batchnorms(fold_batchnorm(net, torch.randn(1, 3, 64, 64))) == 0


class _ConvOutputReadTwice(nn.Module):
    """``bn(conv(x)) + conv(x)``: folding would change the second use, so it must be refused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_changes_the_logits_is_refused() -> None:
    net = _with_trained_statistics(_ConvOutputReadTwice())
    assert fold_batchnorm(net, torch.randn(1, 3, 16, 16)) is net

"""Networks: shapes, the timm-style split, channels_last / bf16, published parameter counts, gradients."""

import importlib.util

import pytest
import torch
from torch import nn

from imgcls.errors import ImgclsError
from imgcls.models.introspection import count_parameters
from imgcls.models.networks import BUILDERS, BasicBlock, Maxout, lenet5, mlp, resnet20, resnet_cifar, timm_network, vgg

HAS_TIMM = importlib.util.find_spec("timm") is not None
TIMM_NAME = "resnet10t"  # a small timm model: checks our split matches timm's

NETWORKS = {name: builder for name, (builder, _) in BUILDERS.items()}
if HAS_TIMM:
    NETWORKS[f"timm:{TIMM_NAME}"] = lambda in_chans, num_classes, image_size: timm_network(
        TIMM_NAME, in_chans, num_classes)

SHAPES = {"1x28x28": (1, 28, 28), "3x32x32": (3, 32, 32), "1x8x8": (1, 8, 8), "3x24x32": (3, 24, 32)}  # 8px: digits


@pytest.fixture(autouse=True)
def one_thread():
    """Batches of 2-16 tiny images gain nothing from threads, and threads stall when the CPU is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, in_chans: int = 3, height: int = 32, width: int | None = None, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return NETWORKS[name](in_chans, num_classes, image_size=(height, width or height)).eval()


def images(in_chans: int = 3, height: int = 32, width: int | None = None, n: int = 2) -> torch.Tensor:
    return torch.randn(n, in_chans, height, width or height, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NETWORKS)
def test_logits_and_embedding_shapes(name, shape):
    in_chans, height, width = SHAPES[shape]
    net, x = build(name, in_chans, height, width, num_classes=7), images(in_chans, height, width)
    with torch.no_grad():
        logits = net(x)
        embedding = net.forward_head(net.forward_features(x), pre_logits=True)
        torch.testing.assert_close(net.forward_head(net.forward_features(x)), logits)
    assert logits.shape == (2, 7)
    assert embedding.shape == (2, net.num_features)


@pytest.mark.parametrize("name", NETWORKS)
def test_reset_classifier_keeps_features(name):
    net, x = build(name), images()
    with torch.no_grad():
        before = net.forward_features(x)
        net.reset_classifier(3)
        assert net(x).shape == (2, 3)
        torch.testing.assert_close(net.forward_features(x), before)
        net.reset_classifier(0)  # as in timm: no classifier, forward gives the embedding
        assert net(x).shape == (2, net.num_features)


@pytest.mark.parametrize("name", NETWORKS)
def test_channels_last_matches_contiguous(name):
    net, x = build(name), images()
    with torch.no_grad():
        expected = net(x)
        got = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NETWORKS)
def test_bf16_autocast_close_to_fp32(name):
    net, x = build(name), images(n=16)
    with torch.no_grad():
        expected = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(x)
    assert got.dtype == torch.bfloat16  # autocast reached the layers
    got = got.float()
    assert torch.isfinite(got).all()
    assert (got - expected).norm() / expected.norm() < 0.05  # bf16 keeps ~3 significant digits; we see ~0.5%
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.75


@pytest.mark.parametrize("name, in_chans, size, expected, tolerance", [
    ("resnet20", 3, 32, 0.27e6, 0.05),  # He et al. 2016, table 6
    ("resnet56", 3, 32, 0.85e6, 0.05),
    ("resnet18", 3, 32, 11.17e6, 0.03),  # torchvision's 11.69M less the 1000-class head and 7x7 stem
    ("lenet5", 1, 32, 61_706, 0),  # LeCun et al. 1998, with a 10-way linear output layer
    ("lenet5", 1, 28, 61_706, 0),  # 28px is padded to LeNet-5's own layer sizes
])
def test_published_parameter_counts(name, in_chans, size, expected, tolerance):
    count = count_parameters(build(name, in_chans, size))
    assert abs(count - expected) <= tolerance * expected, count


def test_count_parameters_counts_weights_not_buffers():
    assert count_parameters(nn.BatchNorm2d(4)) == 8
    assert count_parameters(nn.Linear(3, 2)) == 8


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "maxout"])
def test_mlp_activations(activation):
    net = mlp(1, 10, image_size=(8, 8), hidden="32,16", activation=activation, dropout=0.1, batchnorm=True)
    x = images(1, 8, n=4)
    assert net(x).shape == (4, 10)  # train mode: dropout and batch statistics on
    assert net.eval().forward_head(net.forward_features(x), pre_logits=True).shape == (4, 16)
    widths = [m.out_features for m in net.features if isinstance(m, nn.Linear)]
    assert widths == ([64, 32] if activation == "maxout" else [32, 16])


def test_maxout_is_the_max_of_adjacent_pairs():
    x = torch.randn(5, 12)
    expected = torch.stack([torch.maximum(x[:, 2 * i], x[:, 2 * i + 1]) for i in range(6)], dim=1)
    torch.testing.assert_close(Maxout()(x), expected)


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'swish'.*sigmoid, tanh, relu, leaky_relu, elu, gelu, maxout"):
        mlp(1, 10, image_size=(28, 28), activation="swish")
    with pytest.raises(ValueError, match="valid: relu, tanh"):
        lenet5(1, 10, image_size=(28, 28), activation="gelu")


@pytest.mark.parametrize("call, message", [
    (lambda: vgg(1, 10, image_size=(4, 4)), "at least 8 pixels"),
    (lambda: lenet5(1, 10, image_size=(2, 2)), "at least 4x4"),
    (lambda: resnet_cifar(3, 10, depth=21), "6n \\+ 2"),
    (lambda: mlp(1, 10, image_size=(8, 8), hidden="64,x"), "positive widths"),
])
def test_bad_options_are_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.skipif(not HAS_TIMM, reason="timm not installed")
def test_unknown_timm_name_is_a_one_line_error():
    with pytest.raises(ImgclsError) as caught:
        timm_network("resnet10x", 3, 10)
    message = str(caught.value)
    assert "\n" not in message and "'resnet10x'" in message and "resnet10t" in message


def test_resnet_blocks_start_as_the_identity():
    """The zero-initialised last BN gamma makes each residual branch output 0."""
    net = resnet20(3, 10).eval()
    block = net.features.stage1[1]
    x = torch.rand(2, 16, 8, 8)  # non-negative, like the ReLU output feeding each block
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("name", BUILDERS)
def test_every_parameter_gets_a_gradient(name):
    net = build(name, 3, 8).train()
    for m in net.modules():
        if isinstance(m, BasicBlock):
            nn.init.ones_(m.bn2.weight)  # undo the zero init, which (rightly) blocks gradients into the branch at first
    net(images(3, 8, n=4)).logsumexp(1).sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead

"""Networks: shapes, the timm-style split, channels_last / bf16, published parameter counts, gradients,
and the course's architectures (AlexNet, Inception) trained, saved and listed."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgcls.cli import main
from imgcls.data.load import from_arrays
from imgcls.errors import ImgclsError
from imgcls.models import create_model, load_model, read_metadata
from imgcls.models.introspection import count_parameters
from imgcls.models.networks import (BUILDERS, GOOGLENET_MODULES, BasicBlock, Maxout, alexnet, inception, lenet5, mlp,
                                    resnet20, resnet_cifar, timm_network, vgg)

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


def test_alexnet_and_inception_at_full_size_count_as_torchvision_less_what_was_scaled():
    """At the papers' widths (torchvision's AlexNet, GoogLeNet without its auxiliary classifiers), the
    weights differ from torchvision's only where the docstrings say the small-image versions differ."""
    torchvision = pytest.importorskip("torchvision")
    reference = count_parameters(torchvision.models.alexnet(weights=None))
    ours = alexnet(3, 1000, image_size=(32, 32), widths="64,192,384,256,256", hidden="4096,4096", batchnorm=False)
    first_conv = 3 * 64 * (11 * 11 - 5 * 5)                # 11x11 stride 4 -> 5x5 stride 1
    dense_input = 4096 * 256 * (6 * 6 - 4 * 4)             # torchvision's 6x6 grid -> 4x4
    assert count_parameters(ours) == reference - first_conv - dense_input == 40_110_888

    reference = count_parameters(torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False))
    ours = inception(3, 1000, width_mult=1)
    first_conv = 3 * 64 * (7 * 7 - 3 * 3)                  # 7x7 stride 2 -> 3x3 stride 1
    five_by_five = sum(red * out for _, _, _, red, out, _ in GOOGLENET_MODULES.values()) * (5 * 5 - 3 * 3)
    assert count_parameters(ours) == reference - first_conv + five_by_five == 6_998_152


@pytest.mark.parametrize("name, size, expected", [
    # conv 5x5 1->48 (no bias: batch norm's) + BN, conv 5x5 48->128 + BN, convs 3x3 128->192->192->128 + BNs,
    # dense 128*4*4->512->512, classifier 512->10
    ("alexnet", 28, 25 * 48 + 96 + 25 * 48 * 128 + 256 + 9 * (128 * 192 + 192 * 192 + 192 * 128) + 2 * (192 + 192 + 128)
     + 2048 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10),
    ("alexnet", 64, 2_247_194),                              # any size: the dense layers read a 4x4 grid
    ("inception", 28, 378_658), ("inception", 64, 378_658),  # any size: global average pooling
])
def test_alexnet_and_inception_weights_do_not_depend_on_the_image_size(name, size, expected):
    assert count_parameters(build(name, 1, size)) == expected


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
    (lambda: alexnet(1, 10, image_size=(28, 28), widths="64,128,256"), "five widths"),
    (lambda: inception(1, 10, width_mult=0), "width_mult"),
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


@pytest.fixture(scope="module")
def digits16():
    """scikit-learn's 8x8 digits scaled up to 16x16 (bilinear), split as imgcls splits arrays."""
    digits = pytest.importorskip("sklearn.datasets").load_digits()
    images = torch.from_numpy(digits.images).float()[:, None] * (255 / 16)
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    return from_arrays(images.round().clamp(0, 255).to(torch.uint8)[:, 0], digits.target, name="digits16")


@pytest.mark.parametrize("name", ["alexnet", "inception"])
def test_alexnet_and_inception_learn_digits_and_load_from_their_file(name, digits16, tmp_path):
    model = create_model(name, epochs=4, batch_size=64, opt="adam", lr=2e-3, bf16="off", channels_last="off",
                         compile="off", threads=1, device="cpu", seed=0)
    model.fit(digits16.train, validation=digits16.val)
    assert model.score(digits16.test) > 0.8                 # chance is 0.1
    path = model.save(tmp_path / f"{name}.safetensors")
    metadata = read_metadata(path)
    assert metadata["model"] == name and metadata["params"] == model.get_params()
    loaded = load_model(path)                               # rebuilt from the file alone
    assert type(loaded) is type(model) and loaded.parameter_count == model.parameter_count
    np.testing.assert_allclose(loaded.predict_proba(digits16.test), model.predict_proba(digits16.test), atol=1e-5)


def test_imgcls_models_lists_alexnet_and_inception(capsys):
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    for name, count in (("alexnet", "2,247,194"), ("inception", "378,658")):   # counted for 1x28x28, 10 classes
        row = next(line for line in listed.splitlines() if f" {name} " in line)
        assert count in row

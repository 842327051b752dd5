"""Plain torch networks for small images, each split like timm's models.

Every network maps a normalised float batch (N, in_chans, H, W) to logits (N, num_classes) and has
`forward_features`, `forward_head(x, pre_logits=False)`, `reset_classifier(num_classes)` and
`num_features` (the embedding size), so transfer learning and embeddings work the same for these
and for `timm_network` models. Builders take `(in_chans, num_classes, *, image_size, **options)`.

Smallest input side each network accepts (28 and 32 always work):
  mlp 1, lenet5 4, cnn 4, vgg 2**stages (8 by default), alexnet / inception / resnet20 / resnet56 / resnet18 1
(global average pooling fits any size, but below 8px there is little left to learn from).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import ImgclsError

ImageSize = tuple[int, int]


class Network(nn.Module):
    """A feature extractor followed by (global average pool,) dropout and one linear classifier."""

    def __init__(self, features: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.features = features
        self.num_features = num_features
        self.head_drop = nn.Dropout(dropout)
        self.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (N, C, h, w) for convolutional trunks, embedding (N, num_features) otherwise."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits, or with pre_logits=True the embedding (N, num_features) the classifier reads."""
        if x.ndim == 4:
            x = x.mean((2, 3))  # global average pool: any map size, any memory format
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear classifier; 0 classes makes forward return the embedding, as in timm."""
        self.num_classes = num_classes
        like = next(self.features.parameters(), None)  # keep the model's device and dtype
        options = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        self.head = nn.Linear(self.num_features, num_classes, **options) if num_classes > 0 else nn.Identity()


class Maxout(nn.Module):
    """Maximum over groups of `pieces` adjacent features: (N, pieces * k) -> (N, k)."""

    def __init__(self, pieces: int = 2):
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.pieces)).amax(-1)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU, "gelu": nn.GELU, "maxout": Maxout,
}


def activation_layer(name: str, valid: tuple[str, ...] = tuple(ACTIVATIONS)) -> nn.Module:
    if name not in valid:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(valid)}")
    return ACTIVATIONS[name]()


def mlp(in_chans: int, num_classes: int, *, image_size: ImageSize, hidden: str = "512,256",
        activation: str = "relu", dropout: float = 0.0, batchnorm: bool = False) -> Network:
    """Fully connected network on the flattened pixels; `hidden` lists layer widths ("" = softmax regression).

    Each hidden layer is linear (-> batch norm) -> activation; maxout layers compute twice the width
    and keep the larger of each pair. Any image size.
    """
    widths = _widths(hidden, "hidden", allow_empty=True)
    activation_layer(activation)  # fail before building anything
    pieces = 2 if activation == "maxout" else 1
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_chans * image_size[0] * image_size[1]
    for i, out in enumerate(widths):
        if i:  # dropout before every linear layer but the first; the head adds the last one
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, out * pieces, bias=not batchnorm))  # batch norm has its own bias
        if batchnorm:
            layers.append(nn.BatchNorm1d(out * pieces))
        layers.append(activation_layer(activation))
        width = out
    return Network(nn.Sequential(*layers), width, num_classes, dropout)


def lenet5(in_chans: int, num_classes: int, *, image_size: ImageSize, activation: str = "relu") -> Network:
    """LeNet-5: conv5x5 6 -> pool -> conv5x5 16 -> pool -> 120 -> 84 -> classes; 61,706 weights (1 channel, 10 classes).

    A 5x5 conv is zero-padded by 2 when its input is smaller than in the original 32px net
    (32px for the first, 14px for the second), so 28px images get exactly LeNet-5's layer sizes
    and images down to 4px (8px digits included) still fit.
    """
    act = functools.partial(activation_layer, activation, ("relu", "tanh"))
    pad1 = tuple(2 if n < 32 else 0 for n in image_size)
    size1 = [(n + 2 * p - 4) // 2 for n, p in zip(image_size, pad1)]
    pad2 = tuple(2 if n < 14 else 0 for n in size1)
    size2 = [(n + 2 * p - 4) // 2 for n, p in zip(size1, pad2)]
    if min(size2) < 1:
        raise ValueError(f"lenet5 needs images of at least 4x4 pixels, got {image_size}")
    features = nn.Sequential(
        # Average pooling, like the original's subsampling layers.
        nn.Conv2d(in_chans, 6, 5, padding=pad1), act(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2), act(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * size2[0] * size2[1], 120), act(),
        nn.Linear(120, 84), act(),
    )
    return _init_weights(Network(features, 84, num_classes))


def cnn(in_chans: int, num_classes: int, *, image_size: ImageSize, dropout: float = 0.25,
        batchnorm: bool = True) -> Network:
    """The Keras course CNN: 2 x (two conv3x3 -> max pool -> dropout), dense 512, dropout 0.5, classes.

    Widths 32, 32, 64, 64; padded convs, so only the two pools shrink the image (at least 4px).
    """
    if min(image_size) < 4:
        raise ValueError(f"cnn needs images of at least 4x4 pixels, got {image_size}")
    features = nn.Sequential(
        *_conv_bn_relu(in_chans, 32, batchnorm), *_conv_bn_relu(32, 32, batchnorm),
        nn.MaxPool2d(2), nn.Dropout(dropout),
        *_conv_bn_relu(32, 64, batchnorm), *_conv_bn_relu(64, 64, batchnorm),
        nn.MaxPool2d(2), nn.Dropout(dropout),
        nn.Flatten(),
        nn.Linear(64 * (image_size[0] // 4) * (image_size[1] // 4), 512), nn.ReLU(),
    )
    return _init_weights(Network(features, 512, num_classes, dropout=0.5))


def vgg(in_chans: int, num_classes: int, *, image_size: ImageSize, widths: str = "64,128,256",
        dropout: float = 0.3) -> Network:
    """VGG-style: per width, two conv3x3-BN-ReLU then max pool; global average pool; linear head.

    Each stage halves the image, so it needs at least 2**stages pixels (8 for three widths).
    """
    stage_widths = _widths(widths, "widths")
    if min(image_size) < 2 ** len(stage_widths):
        raise ValueError(f"vgg with {len(stage_widths)} stages needs images of at least "
                         f"{2 ** len(stage_widths)} pixels a side, got {image_size}")
    layers: list[nn.Module] = []
    width = in_chans
    for out in stage_widths:
        layers += [*_conv_bn_relu(width, out), *_conv_bn_relu(out, out), nn.MaxPool2d(2)]
        width = out
    return _init_weights(Network(nn.Sequential(*layers), width, num_classes, dropout))


ALEXNET_GRID = 4    # the side of the map alexnet's dense layers read (torchvision's is 6, at 224px)


def alexnet(in_chans: int, num_classes: int, *, image_size: ImageSize, widths: str = "48,128,192,192,128",
            hidden: str = "512,512", dropout: float = 0.5, batchnorm: bool = True) -> Network:
    """AlexNet (Krizhevsky et al. 2012) for small images: five convs with a max pool after the 1st,
    2nd and 5th, then two hidden dense layers; about 2.2M weights (3 channels, 10 classes).

    Kept from the paper: the layout (the second conv 5x5, the last three 3x3), ReLU, overlapping
    max pooling (3x3 windows, stride 2), dropout 0.5 before each hidden dense layer. Scaled down for
    28-64px images: the first conv is 5x5 stride 1 instead of 11x11 stride 4; the conv widths are
    half the paper's 96,256,384,384,256 and the dense layers 512 wide instead of 4096; one tower
    instead of two GPU halves; batch norm after each conv (batchnorm=False drops it) instead of
    local response normalisation. The pools are padded, so each halves the image (rounding up); an
    adaptive average pool to 4x4 before the dense layers, like torchvision's 6x6 at 224px, leaves
    the map of a 25-32px image as it is and lets any size through (8px digits included).
    """
    conv_widths, dense_widths = _widths(widths, "widths"), _widths(hidden, "hidden")
    if len(conv_widths) != 5:
        raise ValueError(f"alexnet has five convolutions: widths needs five widths, got {widths!r}")
    layers: list[nn.Module] = []
    width = in_chans
    for i, out in enumerate(conv_widths):
        kernel = 5 if i < 2 else 3
        layers += _conv_bn_relu(width, out, batchnorm, kernel)
        if i in (0, 1, 4):
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        width = out
    layers += [nn.AdaptiveAvgPool2d(ALEXNET_GRID), nn.Flatten()]
    width *= ALEXNET_GRID ** 2
    for out in dense_widths:
        layers += [nn.Dropout(dropout), nn.Linear(width, out), nn.ReLU()]
        width = out
    return _init_weights(Network(nn.Sequential(*layers), width, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)).

    The shortcut is the identity, or a 1x1 conv + BN projection (He et al.'s option B) when the
    stride or width changes.
    """

    def __init__(self, in_width: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, width, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_width != width:
            self.shortcut = nn.Sequential(nn.Conv2d(in_width, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet_cifar(in_chans: int, num_classes: int, *, image_size: ImageSize | None = None,
                 depth: int = 20) -> Network:
    """CIFAR ResNet (He et al. 2016, section 4.2): depth = 6n + 2, three stages of n blocks, widths 16/32/64.

    `image_size` is unused (global average pooling fits any size); it is accepted so that every
    builder shares one call signature.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    return _resnet(in_chans, num_classes, stem=16, widths=(16, 32, 64), depths=(n, n, n))


def resnet20(in_chans: int, num_classes: int, *, image_size: ImageSize | None = None) -> Network:
    """CIFAR ResNet-20: 3 stages of 3 blocks, about 0.27M weights."""
    return resnet_cifar(in_chans, num_classes, image_size=image_size, depth=20)


def resnet56(in_chans: int, num_classes: int, *, image_size: ImageSize | None = None) -> Network:
    """CIFAR ResNet-56: 3 stages of 9 blocks, about 0.85M weights."""
    return resnet_cifar(in_chans, num_classes, image_size=image_size, depth=56)


def resnet18(in_chans: int, num_classes: int, *, image_size: ImageSize | None = None) -> Network:
    """ResNet-18 for 28-32px images: 3x3 stride-1 stem and no max pool, then the usual 4 stages (~11.2M weights).

    `image_size` is unused, as for `resnet_cifar`.
    """
    return _resnet(in_chans, num_classes, stem=64, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2))


# GoogLeNet's Inception modules (Szegedy et al. 2015, table 1): #1x1, #3x3 reduce, #3x3, #5x5 reduce,
# #5x5, pool proj; a max pool halves the image before 3a, 4a and 5a.
GOOGLENET_MODULES: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


class InceptionModule(nn.Module):
    """GoogLeNet's Inception module (Szegedy et al. 2015, figure 2b): 1x1, 1x1 -> 3x3, 1x1 -> 5x5
    and 3x3 max pool -> 1x1 branches side by side, their outputs concatenated (`width` channels)."""

    def __init__(self, in_width: int, n1x1: int, n3x3_reduce: int, n3x3: int, n5x5_reduce: int, n5x5: int,
                 pool_proj: int):
        super().__init__()
        self.branch1x1 = nn.Sequential(*_conv_bn_relu(in_width, n1x1, kernel=1))
        self.branch3x3 = nn.Sequential(*_conv_bn_relu(in_width, n3x3_reduce, kernel=1),
                                       *_conv_bn_relu(n3x3_reduce, n3x3, kernel=3))
        self.branch5x5 = nn.Sequential(*_conv_bn_relu(in_width, n5x5_reduce, kernel=1),
                                       *_conv_bn_relu(n5x5_reduce, n5x5, kernel=5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                         *_conv_bn_relu(in_width, pool_proj, kernel=1))
        self.width = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)], 1)


def inception(in_chans: int, num_classes: int, *, image_size: ImageSize | None = None, width_mult: float = 0.25,
              dropout: float = 0.4) -> Network:
    """An Inception network (GoogLeNet, Szegedy et al. 2015) for small images: a stem, GoogLeNet's
    nine Inception modules 3a-5b with a max pool before 3a, 4a and 5a, global average pooling,
    dropout (0.4, as in the paper) and a linear classifier; about 0.38M weights by default.

    Scaled down for 28-64px images: every width is GoogLeNet's times width_mult (a quarter by
    default, so 3a's branches are 16, 24->32, 4->8 and 8 wide). The stem keeps GoogLeNet's three
    convs (64 wide, 1x1 64, 3x3 192, scaled) and its max pool before 3a, but the first conv is 3x3
    stride 1 instead of 7x7 stride 2 and the max pool after it goes: GoogLeNet shrinks 224px by 8
    before 3a, here the image is halved once, so the stem sees a 28px image whole and the modules
    maps of 14x14 (3a-3b), 7x7 (4a-4e) and 4x4 (5a-5b). No auxiliary classifiers and no local
    response normalisation; batch norm after every conv instead, as in Ioffe & Szegedy 2015's
    version of this network and in torchvision's googlenet. The 5x5 branches are 5x5 convs, as in
    the paper (torchvision's googlenet has 3x3 there). `image_size` is unused (global average
    pooling fits any size).
    """
    if not 0 < width_mult <= 4:
        raise ValueError(f"width_mult must be in (0, 4], got {width_mult}")

    def scaled(width: int) -> int:
        return max(1, round(width * width_mult))
    stem = [*_conv_bn_relu(in_chans, scaled(64)), *_conv_bn_relu(scaled(64), scaled(64), kernel=1),
            *_conv_bn_relu(scaled(64), scaled(192))]
    layers: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(*stem))]
    width = scaled(192)
    for name, widths in GOOGLENET_MODULES.items():
        if name in ("3a", "4a", "5a"):
            layers.append((f"pool{name[0]}", nn.MaxPool2d(3, stride=2, padding=1)))
        module = InceptionModule(width, *(scaled(w) for w in widths))
        layers.append((f"inception{name}", module))
        width = module.width
    return _init_weights(Network(nn.Sequential(OrderedDict(layers)), width, num_classes, dropout))


def timm_network(name: str, in_chans: int, num_classes: int, pretrained: bool = False, weights: str = "",
                 **kwargs) -> nn.Module:
    """A timm model by name; unknown names are ImgclsErrors.

    pretrained=True takes timm's weights from the Hugging Face cache, downloading them when there
    is a network; weights=FILE takes them from a local .safetensors/.pth state dict instead.
    """
    try:
        import timm
    except ImportError:
        raise ImgclsError(f"timm model {name!r} needs the timm package: pip install timm") from None
    if weights:
        if not Path(weights).is_file():
            raise ImgclsError(f"--weights {weights}: no such file")
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    try:
        return timm.create_model(name, pretrained=pretrained or bool(weights), num_classes=num_classes,
                                 in_chans=in_chans, **kwargs)
    except RuntimeError as error:
        if not str(error).startswith("Unknown model"):
            raise _weights_error(name, error) from None
    except Exception as error:  # no network, no cached file, a file of another architecture...
        if not (pretrained or weights):
            raise
        raise _weights_error(name, error) from None
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    family = re.match(r"[A-Za-z]*", name).group() or name
    raise ImgclsError(f"unknown timm model {name!r}{hint}; see timm.list_models('*{family}*')") from None


def timm_preprocessing(name: str):
    """The decode timm's pretrained weights for `name` were evaluated with, or None if timm has none."""
    import timm
    from imgcls.data.images import INTERPOLATIONS, Preprocessing
    try:
        cfg = timm.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        return None
    if cfg is None:
        return None
    channels, height, width = cfg.input_size
    interpolation = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bilinear"
    return Preprocessing(channels=channels if channels in (1, 3) else 3, size=(height, width), resize="crop",
                         crop_pct=min(float(cfg.crop_pct or 1.0), 1.0), interpolation=interpolation)


def _weights_error(name: str, error: Exception) -> ImgclsError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return ImgclsError(f"cannot load pretrained weights for timm model {name!r} ({reason}); without internet, "
                       "pass --weights FILE (its state dict as .safetensors or .pth), or put timm's weights "
                       "in the Hugging Face cache (HF_HOME)")


BUILDERS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp": (mlp, "fully connected network on pixels, choice of activation (maxout included)"),
    "lenet5": (lenet5, "LeNet-5 convolutional network (LeCun et al. 1998)"),
    "cnn": (cnn, "Keras course CNN: two conv-conv-pool blocks, dense 512"),
    "alexnet": (alexnet, "AlexNet (Krizhevsky et al. 2012) scaled down for small images, 2.2M weights"),
    "vgg": (vgg, "VGG-style conv3x3-BN-ReLU stages, global average pool"),
    "inception": (inception, "GoogLeNet's Inception modules (Szegedy et al. 2015) at a quarter width, 0.38M weights"),
    "resnet20": (resnet20, "CIFAR ResNet-20 (He et al. 2016), 0.27M weights"),
    "resnet56": (resnet56, "CIFAR ResNet-56 (He et al. 2016), 0.85M weights"),
    "resnet18": (resnet18, "ResNet-18 with a 3x3 stem for 28-32px images, 11.2M weights"),
}


# -- helpers -----------------------------------------------------------------------------------
def _widths(spec: str, option: str, allow_empty: bool = False) -> list[int]:
    try:
        widths = [int(w) for w in spec.split(",") if w.strip()]
    except ValueError:
        widths = [0]
    if (not widths and not allow_empty) or any(w < 1 for w in widths):
        raise ValueError(f"{option} must be comma-separated positive widths such as '64,128', got {spec!r}")
    return widths


def _conv_bn_relu(in_width: int, width: int, batchnorm: bool = True, kernel: int = 3) -> list[nn.Module]:
    """A same-size conv (odd kernel, padded) -> batch norm -> ReLU."""
    norm = [nn.BatchNorm2d(width)] if batchnorm else []
    return [nn.Conv2d(in_width, width, kernel, padding=kernel // 2, bias=not batchnorm), *norm, nn.ReLU()]


def _resnet(in_chans: int, num_classes: int, *, stem: int, widths: tuple[int, ...],
            depths: tuple[int, ...]) -> Network:
    layers: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(*_conv_bn_relu(in_chans, stem)))]
    width = stem
    for i, (out, depth) in enumerate(zip(widths, depths)):
        blocks = [BasicBlock(width if j == 0 else out, out, 2 if i and j == 0 else 1) for j in range(depth)]
        layers.append((f"stage{i + 1}", nn.Sequential(*blocks)))
        width = out
    net = _init_weights(Network(nn.Sequential(OrderedDict(layers)), width, num_classes))
    for block in net.modules():
        if isinstance(block, BasicBlock):
            # Zero gamma makes every residual branch output 0, so each block starts as the identity
            # and the deep net trains like a shallow one at first (Goyal et al. 2017): faster, steadier.
            nn.init.zeros_(block.bn2.weight)
    return net


def _init_weights(net: Network) -> Network:
    """Kaiming-normal convs (fan_out, for ReLU), BN as the identity; linear layers keep torch's default."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net

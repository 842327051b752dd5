"""The airbench-style trainer options, each checked against what it promises: patch whitening (against
scikit-learn's PCA), identity convolutions, the batch-norm bias learning rate (against plain SGD),
lookahead (against its formula), the alternating flip, progressive resizing and multi-crop TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from imgcls.data import ImageDataset, load_dataset
from imgcls.errors import ImgclsError
from imgcls.models import create_model
from imgcls.models.networks import cnn, vgg
from imgcls.runtime import tta_views
from imgcls.training.augment import AugmentConfig
from imgcls.training.config import TrainingConfig
from imgcls.training.initialisation import WHITENING_EPS, dirac_convolutions, whiten_first_convolution
from imgcls.training.lookahead import DECAY, Lookahead
from imgcls.training.trainer import Trainer, build_optimizer


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def smooth_images(n=200, size=12, seed=0) -> torch.Tensor:
    """Images whose neighbouring pixels correlate (blurred noise), as in real photos."""
    noise = torch.rand(n, 1, size + 2, size + 2, generator=torch.Generator().manual_seed(seed))
    return (F.avg_pool2d(noise, 3, stride=1) * 255).round().to(torch.uint8)


def test_whitening_takes_the_principal_directions_of_the_patches(tmp_path):
    net = cnn(1, 10, image_size=(12, 12))
    images = smooth_images()
    before = net.features[0].weight.detach().clone()
    conv = whiten_first_convolution(net, images)
    assert conv is net.features[0]
    patches = F.unfold(images.float(), 3).transpose(1, 2).reshape(-1, 9).double().numpy()
    pca = PCA(n_components=9).fit(patches)
    weights = conv.weight.detach().double().view(32, 9).numpy()
    for k in range(9):             # filter 2k is component k / sqrt(its variance), 2k + 1 its negative
        expected = pca.components_[k] / np.sqrt(pca.explained_variance_[k] * (len(patches) - 1) / len(patches)
                                                + WHITENING_EPS)
        sign = np.sign(weights[2 * k] @ expected)
        np.testing.assert_allclose(weights[2 * k] * sign, expected, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(weights[2 * k + 1], -weights[2 * k])
    outputs = (patches - patches.mean(0)) @ weights[0:18:2].T     # whitened: unit variance, uncorrelated
    np.testing.assert_allclose(np.cov(outputs.T, bias=True), np.eye(9), atol=0.02)
    assert torch.equal(conv.weight[18:], before[18:])             # filters beyond 2 x 9 keep their initialisation


def test_whitening_sees_the_images_as_the_network_does():
    # The network normalises inside: the patches whitened are the normalised pixels, not the raw ones.
    model = create_model("cnn")
    data = ImageDataset.from_arrays(smooth_images().numpy(), np.arange(200) % 2)
    net = model.network_for(data)
    conv = whiten_first_convolution(net, data.images)
    normalised = (data.images.float() / 255 - net.normalize.mean) / net.normalize.std
    patches = F.unfold(normalised, 3).transpose(1, 2).reshape(-1, 9)
    outputs = (patches - patches.mean(0)) @ conv.weight.detach().view(32, 9)[0:18:2].T
    torch.testing.assert_close(torch.cov(outputs.T, correction=0), torch.eye(9), atol=0.02, rtol=0)
    with pytest.raises(ImgclsError, match="convolution"):
        whiten_first_convolution(create_model("mlp").network_for(data), data.images)


def test_dirac_convolutions_pass_their_first_channels_through():
    net = vgg(1, 10, image_size=(16, 16), widths="8,16")
    first = net.features[0]
    before = first.weight.detach().clone()
    assert dirac_convolutions(net, skip=first) == 3
    assert torch.equal(first.weight, before)
    conv = net.features[3]                                   # 8 -> 8 channels
    x = torch.randn(2, 8, 16, 16)
    torch.testing.assert_close(F.conv2d(x, conv.weight, padding=1), x)
    widening = net.features[7]                               # 8 -> 16: the first 8 filters pass through
    torch.testing.assert_close(F.conv2d(x, widening.weight, padding=1)[:, :8], x)
    assert widening.weight[8:].abs().sum() > 0               # the others keep their initialisation


def test_norm_biases_learn_at_their_multiple_of_the_rate():
    torch.manual_seed(0)
    net = vgg(1, 3, image_size=(8, 8), widths="4,8", dropout=0.0)
    reference = vgg(1, 3, image_size=(8, 8), widths="4,8", dropout=0.0)
    reference.load_state_dict(net.state_dict())
    cfg = TrainingConfig(opt="sgd", momentum=0.0, weight_decay=0.0, norm_bias_lr=16.0, lr=0.01, bf16="off",
                         channels_last="off", compile="off")
    norm_biases = {id(m.bias) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    scaled = [g for g in build_optimizer(net, cfg).param_groups if g["lr_scale"] == 16.0]
    assert len(scaled) == 1 and {id(p) for p in scaled[0]["params"]} == norm_biases
    trainer = Trainer(net, cfg)
    trainer.setup(ImageDataset.from_arrays(np.zeros((16, 1, 8, 8), dtype=np.uint8), np.arange(16) % 3))
    before = {id(p): p.detach().clone() for p in net.parameters()}
    x, y = torch.rand(16, 1, 8, 8) * 255, torch.arange(16) % 3
    trainer.step(x, y, 0.01)
    F.cross_entropy(reference(x), y).backward()           # plain SGD by hand: p - rate * grad
    for p, q in zip(net.parameters(), reference.parameters()):
        rate = 0.01 * (16 if id(p) in norm_biases else 1)
        torch.testing.assert_close(p.detach(), before[id(p)] - rate * q.grad, rtol=1e-4, atol=1e-6)


def test_lookahead_moves_a_slow_copy_and_restarts_from_it():
    net = torch.nn.Linear(3, 2)
    look = Lookahead(net, every=2)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    look.after_step(net, 1, 10)                              # not a sync step
    torch.testing.assert_close(net.weight, start + 1)
    look.after_step(net, 4, 10)
    decay = DECAY ** 2 * 0.4 ** 3
    torch.testing.assert_close(net.weight.detach(), start + (1 - decay))
    torch.testing.assert_close(look.slow["weight"], net.weight.detach())
    with torch.no_grad():
        net.weight.add_(1.0)
    look.after_step(net, 9, 9)                               # the last step always syncs
    torch.testing.assert_close(net.weight.detach(), start + (1 - decay) + (1 - DECAY ** 2))


def test_alternating_flip_mirrors_each_image_in_every_other_epoch(digits):
    model = create_model("mlp", augment="flip=alternate", batch_size=2048, bf16="off")
    flipped = []
    for epoch in range(3):
        positions, x, _ = model.preview_training_batch(digits.train, epoch)
        originals = digits.train.images[positions].float()
        mirrored = (x == originals.flip(3)).flatten(1).all(1) & ~(x == originals).flatten(1).all(1)
        same = (x == originals).flatten(1).all(1)
        order = positions.argsort()
        flipped.append(mirrored[order])
        assert (mirrored | same).all()
    assert 0.4 < flipped[0].float().mean() < 0.6
    symmetric = (digits.train.images == digits.train.images.flip(3)).flatten(1).all(1)
    assert torch.equal((flipped[0] ^ flipped[1]) | symmetric, torch.ones_like(symmetric))
    assert torch.equal(flipped[0] | symmetric, flipped[2] | symmetric)
    assert AugmentConfig.from_spec("crop=2,flip=alternate").to_spec() == "crop=2,flip=alternate"
    with pytest.raises(ImgclsError, match="flip=alternate"):
        AugmentConfig.from_spec("flip=sometimes")


def test_progressive_resizing_grows_the_images_to_full_size(digits):
    model = create_model("vgg", widths="8,16", progressive_size=0.5, progressive_until=0.5, epochs=4, bf16="off")
    sizes = [tuple(model.preview_training_batch(digits.train, epoch)[1].shape[2:]) for epoch in range(4)]
    assert sizes == [(4, 4), (6, 6), (8, 8), (8, 8)]
    trained = create_model("vgg", widths="8,16", progressive_size=0.5, epochs=2, batch_size=256, bf16="off")
    trained.fit(digits.train)
    with pytest.raises(ImgclsError, match="progressive resizing"):
        create_model("cnn", progressive_size=0.5, epochs=1, bf16="off").fit(digits.train)
    with pytest.raises(ImgclsError, match="progressive_size"):
        create_model("cnn", progressive_size=0)


def test_multicrop_tta_averages_six_views(digits):
    images = digits.test.images[:5]
    views = tta_views(images, "multicrop")
    assert len(views) == 6 and all(v.dtype == torch.uint8 and v.shape == images.shape for v in views)
    padded = F.pad(images.float(), (1, 1, 1, 1), mode="reflect")
    torch.testing.assert_close(views[2].float(), padded[:, :, :-2, :-2])       # content moved down-right
    torch.testing.assert_close(views[5].float(), padded[:, :, 2:, 2:].flip(3))
    model = create_model("mlp", epochs=1, batch_size=64, bf16="off").fit(digits.train)
    expected = np.mean([model.predict_proba(v) for v in views], axis=0)
    model.tta = "multicrop"
    np.testing.assert_allclose(model.predict_proba(images), expected, atol=1e-6)

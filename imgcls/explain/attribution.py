"""Attribution maps for networks: Grad-CAM and Grad-CAM++ (pytorch-grad-cam), saliency,
integrated gradients and occlusion (Captum).

Each method takes float images (N, C, H, W; pixels 0..255, the network's own input) and target
class indices, and gives float32 maps (N, H, W) at the input's resolution where higher means more
evidence for the target:

- gradcam, gradcam++: the layer's channels weighted by the target's gradients (Selvaraju et al.
  2017; Chattopadhay et al. 2018), ReLU'd, upsampled bilinearly and scaled to 0..1 per image
  (pytorch-grad-cam's own scaling);
- saliency: the largest absolute gradient of the target's score over an image's channels
  (Simonyan et al. 2014): how much a pixel can move the score, in either direction;
- integrated-gradients: the path integral of gradients from a baseline (the network's mean
  pixel: no information) to the image, summed over channels (Sundararajan et al. 2017); its sum
  over the image equals the score's change from the baseline; negative values argue against;
- occlusion: the drop in the target's score when a square patch is replaced by the mean pixel
  (Zeiler and Fergus 2014), the patch a sixth of the image's shorter side, moved by half a patch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

GRADCAM_METHODS = ("gradcam", "gradcam++")
NETWORK_METHODS = (*GRADCAM_METHODS, "saliency", "integrated-gradients", "occlusion")
IG_STEPS = 32


def attribute(method: str, scores: nn.Module, images: torch.Tensor, targets: list[int], *,
              layer: nn.Module | None = None, baseline: torch.Tensor | None = None) -> np.ndarray:
    """Maps (N, H, W) float32 of method for images (float, on the network's device) and targets.
    layer is Grad-CAM's target layer; baseline (1, C, 1, 1) is the pixel that stands for "nothing"."""
    if method in GRADCAM_METHODS:
        return _gradcam(method, scores, images, targets, layer)
    from captum.attr import IntegratedGradients, Occlusion, Saliency
    target = torch.as_tensor(targets, device=images.device)
    images = images.detach().clone().requires_grad_(True)
    if method == "saliency":
        attribution = Saliency(scores).attribute(images, target=target, abs=True).amax(1)
    elif method == "integrated-gradients":
        attribution = IntegratedGradients(scores).attribute(
            images, baselines=baseline.expand_as(images), target=target, n_steps=IG_STEPS,
            internal_batch_size=max(IG_STEPS, len(images))).sum(1)
    elif method == "occlusion":
        side = min(images.shape[2:])
        patch = max(2, round(side / 6))
        stride = max(1, patch // 2)
        channels = images.shape[1]
        # Every channel of a patch at once: the map is one value per position, shared by the channels.
        attribution = Occlusion(scores).attribute(
            images, sliding_window_shapes=(channels, patch, patch), strides=(channels, stride, stride),
            baselines=baseline, target=target, perturbations_per_eval=16).mean(1)
    else:
        raise ValueError(method)
    scores.zero_grad(set_to_none=True)
    return attribution.detach().float().cpu().numpy()


def _gradcam(method: str, scores: nn.Module, images: torch.Tensor, targets: list[int], layer: nn.Module
             ) -> np.ndarray:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    cam_class = GradCAM if method == "gradcam" else GradCAMPlusPlus
    try:
        with cam_class(model=scores, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        scores.zero_grad(set_to_none=True)   # Grad-CAM backpropagates into the weights too; drop that
    return np.asarray(maps, dtype=np.float32)

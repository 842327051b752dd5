"""The course's visual aids, each a PNG with its numbers in JSON (and its arrays in .npz/.npy):

- kernel: an image filtered by a kernel (correlation or convolution, said which);
- filters / templates: a network's first-layer filters, a linear model's rows of W as images;
- activations / top-images: a network's feature maps per stage, and the data's images that drive a
  stage's strongest units hardest (streamed in batches);
- boundaries: kNN decision regions in a 2-D PCA projection, one panel per k;
- batch: a training batch exactly as the trainer sees it after augmentation;
- distances: boxed, shifted and tinted copies at one pixel L2 distance, apart in a network's embedding.

It sits beside imgcls.explain, above inference: it reads saved and pretrained models and datasets.
"""

from imgcls.visuals.batch import show_batch
from imgcls.visuals.boundaries import show_boundaries
from imgcls.visuals.distances import show_distances
from imgcls.visuals.kernel import apply_kernel, parse_kernel, show_kernel
from imgcls.visuals.stages import show_activations, show_top_images, top_images
from imgcls.visuals.filters_and_templates import show_filters, show_templates

__all__ = ["apply_kernel", "parse_kernel", "show_activations", "show_batch", "show_boundaries", "show_distances",
           "show_filters", "show_kernel", "show_templates", "show_top_images", "top_images"]

"""The compiled part of imgcls: the uint8 kNN kernel (imgcls/kernels/knn.cpp).

It is optional: where no C++ compiler is found, the install goes on without it and imgcls
falls back to faiss for L1 and oneDNN for L2 search, saying so once. Everything else about the
package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "imgcls.kernels._knn", ["imgcls/kernels/knn.cpp"], depends=["imgcls/kernels/knn_tile.inc"],
    language="c++",
    # -fno-tree-pre: without it GCC 12 keeps the larger register tiles' accumulators on the stack
    extra_compile_args=["-O3", "-fno-tree-pre", "-std=c++17", "-pthread"], extra_link_args=["-pthread"],
    optional=True)])

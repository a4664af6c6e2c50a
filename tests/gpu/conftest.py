"""GPU tier: skipped unless CUDA is present (run it on the lent GPU machine)."""

import pytest
import torch
from comfy_env import import_comfy, load_pack, register_model_folders

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(items):
    if not HAS_CUDA:
        skip = pytest.mark.skip(reason="needs CUDA (run `make test-gpu` on a GPU machine)")
        for item in items:
            item.add_marker(skip)


if HAS_CUDA:
    import_comfy(cpu=False)
    register_model_folders()


@pytest.fixture(scope="session")
def pack():
    return load_pack()

"""Loading CIFAR-10 in every accepted layout, clear errors for everything else, and the device augmentation."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet.constants import CLASSES, JPEG_DATASET_NAME, MEAN, ORIGINAL_DATASET_NAME
from train.augment import crop_flip, cutout_mask, normalize, train_batch
from train.data import DataError, load_cifar10

# ----- layouts ---------------------------------------------------------------------------


def test_image_folder_tree_loads_in_class_then_file_order(tiny_cifar):
    data = load_cifar10(tiny_cifar.tree)
    n_train, n_test = 10 * tiny_cifar.train_per_class, 10 * tiny_cifar.test_per_class
    assert data.train.images.shape == (n_train, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (n_test, 32, 32, 3)
    assert data.train.labels.tolist() == np.repeat(np.arange(10), tiny_cifar.train_per_class).tolist()
    # Row 5 is the second file of the second class.
    expected = np.asarray(Image.open(tiny_cifar.tree / "train" / CLASSES[1] / "0001.jpg").convert("RGB"))
    assert np.array_equal(data.train.images[tiny_cifar.train_per_class + 1], expected)
    assert data.name == JPEG_DATASET_NAME, "numbers measured on the JPEG copy must carry its name"
    assert data.layout == "image-folder"


def test_tar_gz_of_the_tree_gives_the_same_arrays(tiny_cifar):
    from_tree, from_tar = load_cifar10(tiny_cifar.tree), load_cifar10(tiny_cifar.archive)
    assert from_tar.layout == "archive" and from_tar.name == JPEG_DATASET_NAME
    for a, b in ((from_tree.train, from_tar.train), (from_tree.test, from_tar.test)):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


def test_the_test_split_keeps_its_image_files_for_the_atlas(tiny_cifar):
    for data in (load_cifar10(tiny_cifar.tree), load_cifar10(tiny_cifar.archive)):
        assert data.train.files is None  # 50,000 files' bytes would be memory for nothing
        assert len(data.test.files) == len(data.test)
        # Row 4 is the second file of the second class: its bytes are the file's, as stored.
        path = tiny_cifar.tree / "test" / CLASSES[1] / "0001.jpg"
        assert data.test.files[tiny_cifar.test_per_class + 1] == path.read_bytes()
    assert load_cifar10(tiny_cifar.torchvision_root).test.files is None  # the python batches hold pixels, no files


def test_a_folder_holding_one_tree_is_enough(tiny_cifar):
    data = load_cifar10(tiny_cifar.tree.parent)  # like --data data/ with data/cifar10-jpeg/ inside
    assert len(data.train) == 10 * tiny_cifar.train_per_class


def test_torchvision_root_reads_the_python_batches_exactly(tiny_cifar):
    data = load_cifar10(tiny_cifar.torchvision_root)
    assert data.layout == "torchvision" and data.name == ORIGINAL_DATASET_NAME
    for split, (images, labels) in ((data.train, tiny_cifar.batches_train), (data.test, tiny_cifar.batches_test)):
        assert np.array_equal(split.images, images)
        assert np.array_equal(split.labels, labels)
    assert load_cifar10(tiny_cifar.torchvision_root / "cifar-10-batches-py").train.images.shape == data.train.images.shape


def test_official_python_archive_is_read_like_the_root(tiny_cifar, tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_cifar.torchvision_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = load_cifar10(archive)
    assert np.array_equal(data.test.images, tiny_cifar.batches_test[0])


# ----- clear errors ----------------------------------------------------------------------


@pytest.fixture
def tree_copy(tiny_cifar, tmp_path) -> Path:
    copy = tmp_path / "cifar10-jpeg"
    shutil.copytree(tiny_cifar.tree, copy)
    return copy


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"does not exist\. Expected a CIFAR-10 root .*train/<class>/"):
        load_cifar10(tmp_path / "nowhere")


def test_folder_without_cifar(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError, match=r"holds no CIFAR-10 data \(found: photos\)"):
        load_cifar10(tmp_path)


def test_missing_test_split(tree_copy):
    shutil.rmtree(tree_copy / "test")
    with pytest.raises(DataError, match=r"has train/ but has no test/ split\. Expected .*/test/<class>/"):
        load_cifar10(tree_copy)


def test_wrong_class_folders(tree_copy):
    (tree_copy / "train" / "cat").rename(tree_copy / "train" / "kitten")
    with pytest.raises(DataError, match=r"expected exactly the 10 CIFAR-10 classes.*missing: cat; unexpected: kitten"):
        load_cifar10(tree_copy)


def test_empty_class_folder(tree_copy):
    for f in (tree_copy / "test" / "frog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"test/frog/ holds no images"):
        load_cifar10(tree_copy)


def test_image_of_the_wrong_size(tree_copy):
    Image.new("RGB", (64, 48)).save(tree_copy / "train" / "dog" / "0000.jpg")
    with pytest.raises(DataError, match=r"0000\.jpg is 64x48 px; CIFAR-10 images are 32x32"):
        load_cifar10(tree_copy)


def test_unreadable_image(tree_copy):
    (tree_copy / "train" / "ship" / "0002.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"ship/0002\.jpg is not a readable image"):
        load_cifar10(tree_copy)


def test_empty_archive(tmp_path):
    archive = tmp_path / "empty.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    with pytest.raises(DataError, match=r"empty archive\. Expected .*cifar10-jpeg/train/<class>/"):
        load_cifar10(archive)


def test_archive_without_images(tmp_path):
    archive = tmp_path / "docs.tar.gz"
    readme = tmp_path / "README.md"
    readme.write_text("hello")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(readme, arcname="pack/README.md")
    with pytest.raises(DataError, match=r"holds no images under train/<class>/ .*pack/README\.md"):
        load_cifar10(archive)


def test_archive_missing_a_split(tree_copy, tmp_path):
    shutil.rmtree(tree_copy / "train")
    archive = tmp_path / "half.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree_copy, arcname="cifar10-jpeg")
    with pytest.raises(DataError, match=r"half\.tar\.gz:cifar10-jpeg has test/ but has no train/ split"):
        load_cifar10(archive)


def test_file_that_is_not_an_archive(tmp_path):
    bogus = tmp_path / "cifar10.tar.gz"
    bogus.write_bytes(os.urandom(2048))
    with pytest.raises(DataError, match=r"is a file but not a \.tar\.gz or \.tar archive"):
        load_cifar10(bogus)


def test_truncated_archive(tiny_cifar, tmp_path):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(tiny_cifar.archive.read_bytes()[: tiny_cifar.archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"damaged archive"):
        load_cifar10(cut)


def test_torchvision_root_missing_a_batch(tiny_cifar, tmp_path):
    root = tmp_path / "tv"
    shutil.copytree(tiny_cifar.torchvision_root, root)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"lacks data_batch_3.*--download"):
        load_cifar10(root)


def test_a_batch_pickle_cannot_run_code(tiny_cifar, tmp_path):
    root = tmp_path / "tv"
    shutil.copytree(tiny_cifar.torchvision_root, root)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match=r"test_batch is not a CIFAR-10 python batch .*refusing to load"):
        load_cifar10(root)
    assert not marker.exists()


# ----- augmentation on the device ------------------------------------------------------------


def position_coded_images(n: int) -> torch.Tensor:
    """Every pixel's value says where it is, so a crop can be located exactly."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    image = torch.stack([yy * 8, xx * 8, torch.zeros_like(yy)], -1).to(torch.uint8)
    return image.expand(n, 32, 32, 3).clone()


def test_no_crop_no_flip_is_the_identity():
    images = position_coded_images(4)
    out = crop_flip(images, torch.Generator().manual_seed(0), pad=0, flip=False)
    assert torch.equal(out, images)


def test_crops_are_windows_of_the_reflect_padded_image_and_flips_mirror_them():
    images = position_coded_images(64)
    pad = 4
    padded = np.pad(images[0].numpy(), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    windows = {(dy, dx): padded[dy : dy + 32, dx : dx + 32] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}
    out = crop_flip(images, torch.Generator().manual_seed(0), pad=pad, flip=True).numpy()
    offsets, mirrored = set(), 0
    for crop in out:
        match = [(k, False) for k, w in windows.items() if np.array_equal(crop, w)]
        match += [(k, True) for k, w in windows.items() if np.array_equal(crop, w[:, ::-1])]
        assert match, "every crop must be a 32x32 window of the padded image, possibly mirrored"
        offsets.add(match[0][0])
        mirrored += match[0][1]
    assert len(offsets) > 10 and 10 < mirrored < 54, "offsets and flips must vary across the batch"


def test_same_generator_state_gives_the_same_batch():
    images = position_coded_images(8)
    kwargs = dict(pad=4, flip=True, cutout=8, resolution=16, channels_last=True)
    a = train_batch(images, torch.Generator().manual_seed(3), **kwargs)
    b = train_batch(images, torch.Generator().manual_seed(3), **kwargs)
    c = train_batch(images, torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cutout_masks_a_square_of_the_given_side_at_most():
    mask = cutout_mask(256, 32, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    area = mask.sum(dim=(1, 2, 3))
    assert mask.shape == (256, 1, 32, 32)
    assert area.max() == 64 and area.min() > 0 and (area < 64).any(), "squares may hang over the border"


def test_train_batch_shape_layout_and_normalisation():
    mean_colour = torch.tensor([round(m * 255) for m in MEAN], dtype=torch.uint8).expand(6, 32, 32, 3).clone()
    x = train_batch(mean_colour, torch.Generator().manual_seed(0), pad=4, flip=True, cutout=0, resolution=16,
                    channels_last=True)
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x.abs().max() < 0.01, "the mean colour normalises to ~0"
    assert normalize(mean_colour, channels_last=False).is_contiguous()

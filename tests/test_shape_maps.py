"""Shape maps (targets of ``--method shape``) against scipy/scikit-image and on known shapes."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from selma3d.ssl.shape_maps import (DESCRIPTORS, descriptors, eigenvalues_by_magnitude, hessian, receptive_radius,
                                    shape_maps)

_ORDERS = {(0, 0): (2, 0, 0), (0, 1): (1, 1, 0), (0, 2): (1, 0, 1), (1, 1): (0, 2, 0), (1, 2): (0, 1, 1),
           (2, 2): (0, 0, 2)}


def _as_batch(volume: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(volume.astype(np.float64))[None, None]


@pytest.mark.parametrize("sigma, shape", [(1.0, (12, 14, 16)), (2.0, (9, 20, 11)), (1.5, (3, 8, 8))])
def test_hessian_equals_scipy_gaussian_derivatives(sigma, shape):
    """Every entry equals σ² × scipy's Gaussian derivative, borders included (mirror mode), even
    when the kernel is longer than an axis."""
    volume = np.random.default_rng(0).normal(size=shape)
    h = hessian(_as_batch(volume), sigma)[0].numpy()
    for (i, j), orders in _ORDERS.items():
        expected = sigma**2 * ndi.gaussian_filter(volume, sigma, order=orders, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(h[..., i, j], expected, atol=1e-10)
        np.testing.assert_allclose(h[..., j, i], expected, atol=1e-10)


def test_hessian_and_eigenvalues_agree_with_scikit_image_inside_the_volume():
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    volume = ndi.gaussian_filter(np.random.default_rng(1).normal(size=(40, 40, 40)), 1.0)
    sigma = 2.0
    h = hessian(_as_batch(volume), sigma)[0].numpy() / sigma**2
    reference = hessian_matrix(volume, sigma=sigma, mode="mirror", use_gaussian_derivatives=True)
    inner = (slice(12, -12),) * 3  # skimage truncates its kernels elsewhere; compare away from borders
    for (i, j), entry in zip([(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)], reference):
        scale = np.abs(entry[inner]).max()
        np.testing.assert_allclose(h[..., i, j][inner], entry[inner], atol=2e-3 * scale)
    ours = np.sort(torch.linalg.eigvalsh(torch.from_numpy(h)).numpy(), axis=-1)
    theirs = np.sort(np.moveaxis(np.stack(hessian_matrix_eigvals(reference)), 0, -1), axis=-1)
    np.testing.assert_allclose(ours[inner], theirs[inner], atol=2e-3 * np.abs(theirs[inner]).max())


def test_eigenvalues_are_sorted_by_magnitude():
    h = torch.diag_embed(torch.tensor([[-3.0, 0.5, 2.0], [1.0, -0.1, -5.0]]))
    values = eigenvalues_by_magnitude(h)
    assert values.tolist() == [pytest.approx([0.5, 2.0, -3.0]), pytest.approx([-0.1, 1.0, -5.0])]


def test_descriptors_follow_the_sign_patterns():
    rows = torch.tensor([
        [-1.0, -1.0, -1.0],   # ideal blob
        [0.0, -1.0, -1.0],    # ideal tube
        [0.0, 0.0, -1.0],     # ideal plate
        [1.0, 1.0, 1.0],      # dark blob: nothing
    ])
    d = descriptors(rows)
    blob, tube, plate = d.unbind(-1)
    assert blob.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-4)
    assert tube.tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0], abs=1e-4)
    assert plate.tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0], abs=1e-4)


def _phantoms(size: int = 33):
    z, y, x = np.mgrid[:size, :size, :size] - size // 2
    ball = (z**2 + y**2 + x**2 <= 3.0**2).astype(float)
    tube = (y**2 + x**2 <= 2.0**2).astype(float)  # along z
    plate = (np.abs(x) <= 1).astype(float)  # the plane x = 0
    return {"blob": ball, "tube": tube, "plate": plate}


@pytest.mark.parametrize("shape", DESCRIPTORS)
def test_each_map_peaks_on_its_own_shape(shape):
    """On a ball, a tube and a plate, the map named after the shape is the largest at the centre,
    and its maximum over the volume sits on the object."""
    volume = _phantoms()[shape]
    maps = shape_maps(_as_batch(volume).float(), scales=(1.5,))[0].numpy()
    centre = tuple(s // 2 for s in volume.shape)
    at_centre = dict(zip(DESCRIPTORS, maps[:, centre[0], centre[1], centre[2]]))
    assert max(at_centre, key=at_centre.get) == shape, at_centre
    own = maps[DESCRIPTORS.index(shape)]
    assert volume[np.unravel_index(own.argmax(), own.shape)] == 1
    for other in DESCRIPTORS:
        if other != shape:
            assert at_centre[shape] > 2 * at_centre[other], at_centre


def test_shape_maps_layout_batch_independence_and_radius():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(16, 16, 16)), rng.normal(size=(16, 16, 16))
    batch = torch.from_numpy(np.stack([a, b])[:, None]).float()
    maps = shape_maps(batch, scales=(1.0, 2.0))
    assert maps.shape == (2, 6, 16, 16, 16) and bool((maps >= 0).all())
    alone = shape_maps(batch[1:], scales=(1.0, 2.0))
    torch.testing.assert_close(maps[1:], alone)
    assert receptive_radius((1.0, 2.0)) == 8
    with pytest.raises(ValueError):
        shape_maps(batch[:, 0])


def test_closed_form_eigenvalues_equal_eigvalsh():
    from selma3d.ssl.shape_maps import hessian_entries, symmetric_eigenvalues

    volume = np.random.default_rng(3).normal(size=(10, 11, 12))
    images = _as_batch(volume)
    ours = symmetric_eigenvalues(hessian_entries(images, 1.0))
    reference = torch.linalg.eigvalsh(hessian(images, 1.0))
    torch.testing.assert_close(ours, reference, atol=1e-9, rtol=1e-7)
    # repeated eigenvalues (p = 0) and a diagonal matrix
    entries = {k: torch.tensor([2.0, 1.0]) if k[0] == k[1] else torch.tensor([0.0, 0.0])
               for k in [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]}
    assert symmetric_eigenvalues(entries).tolist() == [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]

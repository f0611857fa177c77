"""Where posts sit on the map: t-SNE of the post vectors into a unit square, and new posts
placed among their nearest neighbours until the next full build."""

from __future__ import annotations

import numpy as np

MARGIN = 0.02  # of the square, kept clear around the points
NEIGHBOURS = 5  # posts a new post is placed among


def fit_square(xy: np.ndarray) -> np.ndarray:
    """Points scaled alike on both axes into [MARGIN, 1 - MARGIN], centred."""
    xy = np.asarray(xy, np.float64)
    if len(xy) == 0:
        return xy.reshape(0, 2)
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = float((high - low).max())
    if span <= 0:
        return np.full((len(xy), 2), 0.5)
    scaled = (xy - (low + high) / 2) / span  # within [-0.5, 0.5]
    return 0.5 + scaled * (1 - 2 * MARGIN)


def project(matrix: np.ndarray, threads: int = 1) -> np.ndarray:
    """Two coordinates in the unit square for each post vector, neighbours kept near.

    t-SNE (cosine, initialised by PCA, seeded: the same posts give the same map). For
    fewer than five posts, PCA alone.
    """
    n = len(matrix)
    if n < 5:
        if n < 2:
            return fit_square(np.zeros((n, 2)))
        centred = matrix - matrix.mean(axis=0)
        _, _, basis = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ basis[:2].T
        return fit_square(np.pad(xy, ((0, 0), (0, 2 - xy.shape[1]))))
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca",
                metric="cosine", random_state=0, n_jobs=max(1, threads))
    # n_jobs covers only the neighbour search; the gradient steps use OpenMP and the PCA BLAS.
    with threadpool_limits(max(1, threads)):
        return fit_square(tsne.fit_transform(matrix.astype(np.float32)))


def place(vectors: np.ndarray, known: np.ndarray, known_xy: np.ndarray) -> np.ndarray:
    """Map positions for new post vectors: the mean position of their NEIGHBOURS most
    similar placed posts, weighed towards the closest."""
    if len(known) == 0:
        return np.full((len(vectors), 2), 0.5)
    sims = vectors @ known.T
    take = min(NEIGHBOURS, len(known))
    nearest = np.argpartition(-sims, take - 1, axis=1)[:, :take]
    weights = np.take_along_axis(sims, nearest, axis=1).clip(min=1e-3) ** 4
    weights /= weights.sum(axis=1, keepdims=True)
    return (known_xy[nearest] * weights[..., None]).sum(axis=1)

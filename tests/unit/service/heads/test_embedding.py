"""The embedding head: Matryoshka truncation before L2 normalization, the per-request switch, and
cosine ranking."""

from __future__ import annotations

import numpy as np
import pytest

from bertserve.modelrepo import EmbeddingConfig, Pooling
from bertserve.service.errors import InvalidInputError
from bertserve.service.heads.embedding import EmbeddingHead, cosine_scores

POOLED = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.5]], dtype=np.float32)


def head(normalize: bool = True) -> EmbeddingHead:
    return EmbeddingHead(EmbeddingConfig(pooling=Pooling.MEAN, normalize=normalize, dimensions=3))


def test_normalizes_by_default_and_keeps_a_zero_vector_zero() -> None:
    out = head().postprocess(POOLED)
    np.testing.assert_allclose(out[0], [3 / 13, 4 / 13, 12 / 13], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(np.linalg.norm(out[[0, 2]], axis=1), 1.0, rtol=1e-6)


def test_the_models_default_and_the_requests_choice() -> None:
    np.testing.assert_array_equal(head(normalize=False).postprocess(POOLED), POOLED)
    np.testing.assert_array_equal(head().postprocess(POOLED, normalize=False), POOLED)
    assert np.linalg.norm(head(normalize=False).postprocess(POOLED, normalize=True)[0]) == pytest.approx(1.0)


def test_dimensions_cut_first_then_normalize() -> None:
    out = head().postprocess(POOLED, dimensions=2)
    np.testing.assert_allclose(
        out[0], [0.6, 0.8], rtol=1e-6
    )  # the unit vector of (3, 4), not of a cut (3,4,12)/13
    assert out.shape == (3, 2)
    assert POOLED[0, 0] == 3.0  # the backend's rows are not modified in place


@pytest.mark.parametrize("dimensions", [0, 4, -1])
def test_dimensions_outside_the_model_are_refused(dimensions: int) -> None:
    with pytest.raises(InvalidInputError, match="between 1 and the model's 3"):
        head().postprocess(POOLED, dimensions=dimensions)


def test_a_wrong_width_from_the_backend_is_an_error_not_an_answer() -> None:
    with pytest.raises(ValueError, match=r"expected embeddings \[n, 3\]"):
        head().postprocess(np.zeros((2, 4), dtype=np.float32))


def test_cosine_scores() -> None:
    docs = np.array([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(
        cosine_scores(np.array([3.0, 0.0], dtype=np.float32), docs), [1.0, 0.0, 2**-0.5], rtol=1e-6
    )

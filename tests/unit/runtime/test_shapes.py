"""TensorRT's profile buckets, planned from the batcher's limits: pure, tested without a GPU."""

from __future__ import annotations

import random

import pytest

from bertserve.modelrepo import BatchingConfig
from bertserve.runtime.base import BackendKind
from bertserve.runtime.shapes import ShapeBucket, ShapePlan, padding_plan
from bertserve.service.batching import plan_batch


def test_buckets_cover_every_length_up_to_max_length_under_the_token_budget() -> None:
    plan = ShapePlan.for_batching(max_batch_size=64, max_batch_tokens=8192, max_length=512)
    assert plan.buckets == (
        ShapeBucket(1, 32, 64),
        ShapeBucket(33, 64, 64),
        ShapeBucket(65, 128, 64),
        ShapeBucket(129, 256, 32),  # the token budget binds: 32 x 256 = 8192
        ShapeBucket(257, 512, 16),
    )
    assert plan.describe() == "32x64,64x64,128x64,256x32,512x16"


@pytest.mark.parametrize(
    ("max_length", "lengths"),
    [(128, (32, 64, 128)), (200, (32, 64, 128, 200)), (16, (16,)), (512, (32, 64, 128, 256, 512))],
)
def test_buckets_stop_at_the_models_max_length(max_length: int, lengths: tuple[int, ...]) -> None:
    assert ShapePlan.for_batching(32, 8192, max_length).lengths == lengths


def test_a_budget_below_a_bucket_still_runs_one_sequence() -> None:
    plan = ShapePlan.for_batching(max_batch_size=8, max_batch_tokens=100, max_length=512)
    assert [b.max_batch for b in plan.buckets] == [3, 1, 1, 1, 1]


def test_custom_bucket_lengths_are_sorted_and_deduplicated() -> None:
    plan = ShapePlan.for_batching(4, 4096, 128, lengths=(96, 16, 16, 300))
    assert plan.lengths == (16, 96, 128)
    with pytest.raises(ValueError, match="at least 1"):
        ShapePlan.for_batching(4, 4096, 128, lengths=(0, 64))
    with pytest.raises(ValueError, match="at least 1"):
        ShapePlan.for_batching(0, 4096, 128)


def test_each_length_pads_to_the_smallest_bucket_that_holds_it() -> None:
    plan = ShapePlan.for_batching(32, 8192, 384)
    got = {n: plan.bucket_length(n) for n in (1, 31, 32, 33, 64, 65, 129, 256, 257, 384)}
    assert got == {1: 32, 31: 32, 32: 32, 33: 64, 64: 64, 65: 128, 129: 256, 256: 256, 257: 384, 384: 384}
    assert plan.bucket_length(385) == 385  # no bucket: left as it is, for TensorRT to refuse that batch


def test_the_digest_names_the_profile_set() -> None:
    a = ShapePlan.for_batching(32, 8192, 128)
    assert a.digest == ShapePlan.for_batching(32, 8192, 128).digest
    assert len(a.digest) == 12
    others = [
        ShapePlan.for_batching(64, 8192, 128),
        ShapePlan.for_batching(32, 2048, 128),
        ShapePlan.for_batching(32, 8192, 256),
        ShapePlan.for_batching(32, 8192, 128, lengths=(64,)),
    ]
    assert len({a.digest, *(o.digest for o in others)}) == 5
    # limits that give the same profiles (a budget that never binds) share the engine
    assert ShapePlan.for_batching(32, 4096, 128).digest == a.digest


def test_only_tensorrt_pads_to_buckets() -> None:
    batching = BatchingConfig(max_batch_size=16, max_batch_tokens=2048)
    assert padding_plan(BackendKind.TENSORRT, batching, 128) == ShapePlan.for_batching(16, 2048, 128)
    for kind in (BackendKind.ORT_CPU, BackendKind.OPENVINO_CPU, BackendKind.ORT_CUDA, BackendKind.FAKE):
        assert padding_plan(kind, batching, 128) is None
    assert padding_plan("a test's own backend", batching, 128) is None


@pytest.mark.parametrize("seed", range(5))
def test_every_batch_the_batcher_cuts_at_bucket_lengths_fits_a_profile(seed: int) -> None:
    """The batcher plans TensorRT batches at their padded lengths: whatever the queue, the batch it
    cuts (count x bucket length) lies inside the profile of its bucket, so TensorRT never meets a
    shape it has no engine for."""
    rng = random.Random(seed)
    max_batch, tokens, max_length = rng.choice([(32, 8192, 512), (64, 8192, 128), (8, 1000, 512)])
    plan = ShapePlan.for_batching(max_batch, tokens, max_length)
    by_length = {b.length: b for b in plan.buckets}
    for _ in range(200):
        lengths = sorted(rng.randint(1, max_length) for _ in range(rng.randint(1, 80)))
        padded = [plan.bucket_length(n) for n in lengths]
        anchor = rng.randrange(len(lengths))
        lo, hi = plan_batch(padded, anchor, max_batch, tokens, rng.choice([0.0, 0.5]))
        bucket = by_length[plan.bucket_length(max(lengths[lo:hi]))]
        assert bucket.min_length <= max(lengths[lo:hi]) <= bucket.length
        assert 1 <= hi - lo <= bucket.max_batch


def test_tensorrt_shapes_repeat_every_input_per_profile() -> None:
    plan = ShapePlan.for_batching(8, 1024, 64)
    low, opt, high = plan.tensorrt_shapes(("input_ids", "attention_mask"))
    assert low == "input_ids:1x1,attention_mask:1x1,input_ids:1x33,attention_mask:1x33"
    assert opt == high == "input_ids:8x32,attention_mask:8x32,input_ids:8x64,attention_mask:8x64"
    assert plan.warmup_shapes() == ((8, 32), (8, 64))

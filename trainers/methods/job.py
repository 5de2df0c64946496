"""The head of a pruning-at-initialization train job: W_k in, the job's starting mask out.

Scoring runs on CPU whatever device trains the job: the mask is a pure function of W_k, the
data seed and k (which draw the scoring batch) and the job's AtInitConfig, all of which its id
covers (the scoring batch's pixels are those of the job's data pipeline, as training's are).
"""
from __future__ import annotations

from typing import Callable

import torch

from trainers.data.bundle import DataBundle
from trainers.data.order import scoring_stream_seed
from trainers.jobs import TrainJob
from trainers.methods import USES_DATA, ScoreInputs, compute_mask
from trainers.pruning import Mask, full_mask, shuffle_within_layers

SCORING_BATCH = 256  # examples per batch walked while collecting the class-balanced scoring batch


def scoring_batch(data: DataBundle, data_seed: int, k: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` training examples of every class, the first ones of each class met along a
    data-order stream of its own (seed from data_seed and k: order.scoring_stream_seed), as the
    training stream draws them (augmented when data.augment). Classes in label order."""
    info = data.info
    bs = min(SCORING_BATCH, info.num_train)
    stream = data.train_stream(scoring_stream_seed(data_seed, k), bs, 0)
    taken: dict[int, list[torch.Tensor]] = {c: [] for c in range(info.num_classes)}
    for _ in range(data.iterations_per_epoch(bs)):
        x, y = next(stream)
        x, y = x.cpu(), y.cpu()
        for i, c in enumerate(y.tolist()):
            if len(taken[c]) < per_class:
                taken[c].append(x[i])
        if all(len(v) == per_class for v in taken.values()):
            break
    short = {c: len(v) for c, v in taken.items() if len(v) < per_class}
    if short:
        raise ValueError(
            f"pruning.at_init.scoring.examples_per_class: {per_class} examples of every class are needed, "
            f"but one epoch holds only {short} of classes {sorted(short)[:5]}"
        )
    xs = [x for c in range(info.num_classes) for x in taken[c]]
    ys = [c for c in range(info.num_classes) for _ in taken[c]]
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def random_sample(data: DataBundle, data_seed: int, k: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` training examples along the scoring stream (the stream of
    `scoring_batch`), whatever their classes: a uniformly random draw without replacement, as
    Synaptic-Flow's code scores SNIP and GraSP on a random subset of 10 x classes examples."""
    bs = min(SCORING_BATCH, data.info.num_train)
    stream = data.train_stream(scoring_stream_seed(data_seed, k), bs, 0)
    xs, ys, have = [], [], 0
    while have < size:
        x, y = next(stream)
        take = min(size - have, len(y))
        xs.append(x[:take].cpu())
        ys.append(y[:take].cpu())
        have += take
    return torch.cat(xs), torch.cat(ys)


def mask_at_init(job: TrainJob, weights: dict[str, torch.Tensor], model: torch.nn.Module,
                 open_data: Callable[[], DataBundle]) -> Mask:
    """The mask of `job.at_init` from W_k (`weights`); `model` is any model of the job's
    architecture (it is copied, never changed); `open_data` is called only by methods that score
    on data."""
    a = job.at_init
    assert a is not None
    mask = full_mask(model, a.ignore)
    inp = ScoreInputs(weights=weights, mask=mask, model=model, seed=a.seed, bn_mode=a.bn_mode,
                      temperature=a.temperature)
    if a.method in USES_DATA:
        data = open_data()
        if a.sample == "random":
            size = a.examples_per_class * int(data.info.num_classes)
            inp.batch = random_sample(data, job.data_seed, job.start_iter, size)
        else:
            inp.batch = scoring_batch(data, job.data_seed, job.start_iter, a.examples_per_class)
        inp.input_shape = tuple(data.info.input_shape)
    else:
        from trainers.data.ondisk import describe

        inp.input_shape = tuple(describe(job.train.data).input_shape)
    new = compute_mask(a.method, inp, a.keep, a.scope, invert=a.invert, iterations=a.iterations, schedule=a.schedule)
    if a.shuffle:
        new = shuffle_within_layers(new, job.prune_seed)
    return new

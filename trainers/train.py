"""The training loop: one `train` job of a lottery-ticket sweep, top to bottom.

A job is a dense run (level 0), a level of a lineage, or a branch child. It
  1. finds its starting point: W0, W_k, or the parent's final weights, and its mask (pruning the
     parent's final weights is the head of this job; DESIGN.md "The science, precisely");
  2. trains iterations [start_iter, stop_iter) with the LR schedule positioned at the iteration
     and the data stream continued from it, keeping pruned weights exactly zero;
  3. saves W_k at the rewinding points, evaluates every `eval_every` iterations and writes a
     resumable checkpoint every N iterations or seconds;
  4. writes weights.pt, mask.pt and result.json into `paths.out_dir` atomically.

On N ranks (`rt.world_size` > 1, the process group joined: trainers/distributed.py) every rank
runs this same loop on its slice of each global batch and evaluates its slice of the evaluation
batches; rank 0 alone writes (checkpoints, W_k, weights, result), every rank resumes from rank
0's checkpoint, the ranks check that they train one mask, and a missing rewinding point is
replayed by the whole gang.

A job restarted with the same out_dir resumes from checkpoint.pt and ends bitwise-identical (on
CPU) to an uninterrupted run; a job whose result.json exists returns it without training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import torch
import torch.nn.functional as F

from trainers import checkpoint, distributed, early_bird, structure
from trainers.compiling import compiled
from trainers.data.bundle import Shard
from trainers.data.sources import DataBundle, DataInfo, open_data
from trainers.determinism import applied, kernels
from trainers.evaluate import evaluate, param_dtype, to_model_input
from trainers.graph_rules import cuda_graphs_problem
from trainers.graphed import make_step
from trainers.jobs import LayerRow, MetricRow, OptimizerConfig, TrainJob, TrainPaths, TrainResult
from trainers.models import build_model
from trainers.correlation import layer_rows
from trainers.pruning import MaskApplier, density, full_mask, masked_weights, prunable_names, prune, shuffle_within_layers
from trainers.runtime import Runtime
from trainers.schedule import lr_at

from trainers.job_files import CHECKPOINT, MASK, RESULT, WEIGHTS, rewind_file  # noqa: F401 - re-exported (trainers/packed.py)


def fingerprint(job: TrainJob) -> str:
    """Identifies the job a checkpoint belongs to (the orchestrator's job id also covers inputs).

    The data set's location (data.root) is left out: a job re-queued on another node reads the
    same data set from that node's own copy (orchestrator/cluster.py), at another path. So are
    the rewinding points (save_iters), as in the job id: a sweep that gains a k while its dense
    run is interrupted resumes that run, and any W_k before the checkpoint is replayed at the end
    (`add_missing_rewind_points`)."""
    fields = dataclasses.asdict(job)
    fields["train"]["data"].pop("root", None)
    for name, default in (("bn_sync", "global"), ("bn_batch", None), ("bn_scale_init", None)):  # as in the job id: older checkpoints resume
        if fields["train"].get(name) == default:
            fields["train"].pop(name)
    fields.pop("save_iters", None)
    fields.pop("channel_report", None)  # a measure, not part of the job (as in the id)
    for name, default in (("at_init", None), ("reinit_keep_signs", False), ("transfer", None)):  # as the job id: old checkpoints resume
        if fields.get(name) == default:
            fields.pop(name)
    if fields.get("prune") and fields["prune"].get("criterion") == "magnitude":
        fields["prune"].pop("criterion")
    # fields added since (issues 27, 28), as in the id: a checkpoint written before them resumes
    for section, name, default in (("prune", "rank_batches", 5), ("prune", "rank_batch_size", 128),
                                   ("prune", "layer_fractions", ()), ("at_init", "sample", "class_balanced")):
        if fields.get(section) and fields[section].get(name) == default:
            fields[section].pop(name)
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def validate(job: TrainJob, paths: TrainPaths) -> None:
    T = job.train.iterations
    if T <= 0:
        raise ValueError(f"train.iterations: must be positive, got {T}")
    if not 0 <= job.start_iter < job.stop_iter <= T:
        raise ValueError(
            f"start_iter/end_iter: need 0 <= start_iter ({job.start_iter}) < end_iter ({job.stop_iter}) "
            f"<= train.iterations ({T})"
        )
    for k in job.save_iters:
        if not job.start_iter <= k <= job.stop_iter:
            raise ValueError(
                f"save_iters: rewinding point {k} is outside the run [{job.start_iter}, {job.stop_iter}] "
                f"(train.iterations is {T})"
            )
    if job.prune is not None:
        if not 0.0 < job.prune.fraction < 1.0:
            raise ValueError(f"prune.fraction: must be in (0, 1), got {job.prune.fraction}")
        if job.prune.strategy == "random" and paths.parent_mask is None:
            raise ValueError("paths: the random-pruning control needs parent_mask (IMP's mask of its level)")
        if job.prune.strategy != "random" and (paths.parent_weights is None or paths.parent_mask is None):
            raise ValueError("paths: a pruning job needs parent_weights and parent_mask")
    if job.transfer is not None and (job.prune is not None or job.at_init is not None or job.reinit_seed is not None
                                     or paths.rewind_weights is None or paths.parent_mask is None):
        raise ValueError("paths: a transfer job starts from the source's mask (parent_mask) and W_k (rewind_weights), "
                         "and neither prunes nor re-initialises")
    if job.at_init is not None:
        if job.prune is not None or paths.rewind_weights is None:
            raise ValueError("paths.rewind_weights: pruning at initialization scores W_k (and prune must be None)")
    if job.prune is not None and job.prune.criterion != "magnitude" and paths.rewind_weights is None:
        raise ValueError(f"paths.rewind_weights: prune criterion {job.prune.criterion} needs W_k")
    if job.reinit_keep_signs and (job.reinit_seed is None or paths.rewind_weights is None):
        raise ValueError("paths.rewind_weights: reinit_keep_signs takes the signs of W_k and needs reinit_seed")
    if job.retrain in ("lr_rewind", "finetune") and job.prune is not None and paths.parent_weights is None:
        raise ValueError(f"paths.parent_weights: retrain={job.retrain} starts from the parent's weights")
    if job.train.batch_size <= 0:
        raise ValueError(f"train.batch_size: must be positive, got {job.train.batch_size}")
    if job.train.cuda_graphs:
        problem = cuda_graphs_problem(job.train.data.name, job.train.compile)
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")


def _restrict(mask: dict[str, torch.Tensor], names: list[str], path: str) -> dict[str, torch.Tensor]:
    missing = [n for n in names if n not in mask]
    if missing:
        raise checkpoint.CheckpointError(f"mask file {path} lacks prunable tensors {missing[:5]}")
    return {n: mask[n] for n in names}


def starting_point(job: TrainJob, paths: TrainPaths, model: torch.nn.Module, info: DataInfo,
                   data: DataBundle | None = None) -> tuple[dict, dict]:
    """(weights, mask) the job starts from, on CPU. `model` holds W0 (from init_seed). `data`:
    the job's data, for pruning at initialization's scoring batch (opened on CPU when None)."""
    if job.transfer is not None:  # another experiment's ticket (trainers/transfer.py)
        from trainers.transfer import transferred_start

        return transferred_start(job.transfer, checkpoint.state_dict_cpu(model), prunable_names(model),
                                 checkpoint.load_weights(paths.rewind_weights), checkpoint.load_mask(paths.parent_mask))
    ignore = job.prune.ignore if job.prune is not None else job.at_init.ignore if job.at_init is not None else ()
    names = prunable_names(model, ignore)
    if paths.parent_mask is None:
        mask = full_mask(model, ignore)
    elif job.prune is None:  # kept as it is: a branch child of the dense network, say
        mask = checkpoint.load_mask(paths.parent_mask)
    else:  # the parent may have been dense, with every Conv/Linear weight in its mask
        mask = _restrict(checkpoint.load_mask(paths.parent_mask), names, paths.parent_mask)

    parent = checkpoint.load_weights(paths.parent_weights) if paths.parent_weights else None
    w_k = checkpoint.load_weights(paths.rewind_weights) if paths.rewind_weights else None
    if job.at_init is not None:  # pruning at initialization: score W_k (trainers/methods/)
        from trainers.methods.job import mask_at_init

        mask = mask_at_init(job, w_k, model, lambda: data or open_data(job.train.data, torch.device("cpu")))
    elif job.prune is not None and job.prune.granularity == "channel":
        mask = channel_step(job, model, checkpoint.load_mask(paths.parent_mask) if paths.parent_mask else mask, parent,
                            lambda: data or open_data(job.train.data, torch.device("cpu")))
    elif job.prune is not None and job.prune.strategy == "random":  # IMP's mask of this level, shuffled
        mask = shuffle_within_layers(mask, job.prune_seed)
    elif job.prune is not None and job.prune.criterion != "magnitude":  # Zhou et al.'s criteria
        from trainers.methods.magnitude import criterion_mask

        mask = criterion_mask({n: parent[n] for n in names}, mask, job.prune, {n: w_k[n] for n in names})
    elif job.prune is not None:
        mask = prune({n: parent[n] for n in names}, mask, job.prune, seed=job.prune_seed)

    if job.reinit_seed is not None:  # control: IMP's mask, fresh weights
        fresh = build_model(job.train.model, info.input_shape, info.num_classes, seed=job.reinit_seed, bn_scale_init=job.train.bn_scale_init)
        weights = checkpoint.state_dict_cpu(fresh)
        if job.reinit_keep_signs:  # Zhou et al.'s control: fresh magnitudes, the signs of W_k
            weights = {n: (v.abs() * torch.where(w_k[n] < 0, -1.0, 1.0).to(v.dtype) if n in mask else v)
                       for n, v in weights.items()}
    elif job.retrain in ("lr_rewind", "finetune") and parent is not None:
        weights = parent
    elif w_k is not None:
        weights = w_k
    elif job.start_iter == 0:
        weights = checkpoint.state_dict_cpu(model)
    else:
        raise ValueError(f"paths.rewind_weights: a job starting at iteration {job.start_iter} needs W_k")
    return weights, mask


def channel_step(job: TrainJob, model: torch.nn.Module, parent_mask: dict, parent: dict | None,
                 open_data_cpu=None) -> dict:
    """The structured head of a level: channel flags read from the parent's mask, pruned (or
    shuffled, for the random control) and expanded into a parameter mask over the prunable
    weights (density) and everything a dead channel zeroes (biases, BatchNorm, input slices).
    `open_data_cpu`: the job's data, for a score that needs it (hrank)."""
    from trainers.methods.channels import prune_channels, shuffle_channels

    cfg = job.prune
    groups = structure.channel_groups(model, cfg.groups, cfg.ignore)
    alive = structure.alive_channels(groups, parent_mask)
    if cfg.strategy == "random":  # IMP's channel mask of this level, shuffled within each group
        alive = shuffle_channels(alive, job.prune_seed)
    elif cfg.channel_score == "hrank":
        alive = prune_channels(parent, alive, groups, cfg, scores=hrank_of(job, model, parent, groups, open_data_cpu()))
    else:
        alive = prune_channels(parent, alive, groups, cfg)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    mask = full_mask(model, cfg.ignore)
    for name, part in structure.expand(groups, alive, shapes).items():
        mask[name] = mask[name] & part if name in mask else part
    return mask


def hrank_of(job: TrainJob, model: torch.nn.Module, weights: dict, groups, data: DataBundle) -> dict:
    """HRank's scores of the parent's weights: `rank_batches` batches of `rank_batch_size` along a
    data-order stream of their own (seeded by the data seed and k, as pruning at init's scoring
    batch: order.scoring_stream_seed), so the scores are a pure function of what the id covers."""
    from trainers.data.order import scoring_stream_seed
    from trainers.methods.channels import hrank_scores

    cfg = job.prune
    stream = data.train_stream(scoring_stream_seed(job.data_seed, job.start_iter), cfg.rank_batch_size, 0)
    batches = (next(stream)[0].cpu() for _ in range(cfg.rank_batches))
    return hrank_scores(model, weights, groups, batches)


def make_optimizer(job: TrainJob, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = list(model.parameters())
    return build_optimizer(job.train.optimizer, params, [p.ndim <= 1 for p in params], device)


def build_optimizer(
    opt: OptimizerConfig, params: list[torch.Tensor], is_vector: list[bool], device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer of `params`; `is_vector` marks BatchNorm weights and biases (1-D in the model:
    packed training passes its stacked tensors, whose dimension is one more)."""
    decay, no_decay = [], []
    for p, vector in zip(params, is_vector):
        (no_decay if (vector and not opt.decay_norm_and_bias) else decay).append(p)
    groups = [{"params": decay, "weight_decay": opt.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, **fast)
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr, betas=opt.betas, **fast)
    raise ValueError(f"optimizer.name: unknown optimizer {opt.name!r} (valid: sgd, adam)")


def lr_for(job: TrainJob, it: int) -> float:
    """The learning rate of iteration `it`: the schedule's, or finetuning's fixed one."""
    if job.retrain == "finetune" and job.prune is not None:
        return job.finetune_lr
    return lr_at(job.train.schedule, job.train.optimizer.lr, job.train.iterations, it)


def train(job: TrainJob, paths: TrainPaths, rt: Runtime) -> TrainResult | None:
    """The job's result (None on ranks other than 0 of a gang: rank 0 holds it)."""
    with kernels(job.train.deterministic, rt.device):
        return _train(resolve_start(job, paths), paths, rt)


def resolve_start(job: TrainJob, paths: TrainPaths) -> TrainJob:
    """An early-bird `continue` job starts where its search detected the ticket (an output of
    the search, so not part of the description): the iteration is read from eb_<p>.json."""
    if not job.start_at_detection:
        return job
    if paths.detection is None:
        raise ValueError("paths.detection: a start_at_detection job needs its search's eb_<p>.json")
    with open(paths.detection) as f:
        start = int(json.load(f)["detect_iter"])
    if start >= job.stop_iter:
        start = job.stop_iter - 1  # detected at the very end: one step of continued training
    return dataclasses.replace(job, start_iter=start, start_at_detection=False)


def _train(job: TrainJob, paths: TrainPaths, rt: Runtime) -> TrainResult | None:
    t_start = time.time()
    validate(job, paths)
    cfg, device, out = job.train, rt.device, paths.out_dir
    distributed.check(cfg.batch_size, cfg.bn_sync, cfg.bn_batch, rt.world_size, device, cfg.cuda_graphs)
    writer = rt.rank == 0  # the one rank that writes files
    os.makedirs(out, exist_ok=True)
    result_path = os.path.join(out, RESULT)
    # Rank 0's directory decides for the gang (another rank may see a staged copy, or none)
    finished = distributed.from_rank0(
        os.path.exists(result_path) and os.path.exists(os.path.join(out, WEIGHTS)), rt.world_size, device)
    if finished:  # a missing W_k is replayed by the whole gang, each rank at its own slice
        done = None
        if writer:
            with open(result_path) as f:
                done = result_from_json(json.load(f))
        return add_missing_rewind_points(job, out, done, rt)

    data = open_data(cfg.data, device, rt.data_cache, num_workers=rt.loader_workers())
    info = data.info
    # fp64 before any weights are loaded, so that a float64 checkpoint is never rounded on resume
    model = build_model(cfg.model, info.input_shape, info.num_classes, seed=job.init_seed, bn_scale_init=cfg.bn_scale_init).to(param_dtype(cfg.precision))

    # --- starting point: a checkpoint of this very job, or the job's inputs -------------------
    fp = fingerprint(job)
    ckpt_path = os.path.join(out, CHECKPOINT)
    ckpt = checkpoint.load_resumable(ckpt_path, fp)
    if ckpt is not None:
        weights, mask, start = ckpt["model"], ckpt["mask"], ckpt["iteration"]
        metrics = [MetricRow(**m) for m in ckpt["metrics"]]
        initial = masked_weights(*starting_point(job, paths, model, info, data))  # for the weight correlation
    else:
        weights, mask = starting_point(job, paths, model, info, data)
        start, metrics = job.start_iter, []
        initial = masked_weights(weights, mask)
        if writer:  # (outputs: durable together, before the checkpoint or result.json that counts on them)
            checkpoint.save(mask, os.path.join(out, MASK), durable=False)
    # One mask for the gang: every rank computed it (or read it from rank 0's checkpoint); a
    # non-deterministic scoring kernel must not let the ranks train different networks.
    distributed.check_same("the mask", distributed.tensors_digest(mask), rt.world_size, device)
    model.load_state_dict(weights)
    channels_last = cfg.channels_last and device.type == "cuda"
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    model = distributed.sync_batchnorm(model, cfg.bn_sync, rt.world_size, device)
    masks = MaskApplier(model, mask, l1_gamma=cfg.l1_gamma)
    masks.apply_to_weights()
    optimizer = make_optimizer(job, model, device)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["cpu"])
    forward = distributed.data_parallel(model, device, rt.world_size)
    forward = compiled(forward) if cfg.compile else forward
    global_size = cfg.batch_size  # examples in this iteration's global batch (all ranks together)

    def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if rt.world_size == 1:
            return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        # the exact mean over the global batch once DDP has averaged the ranks' gradients
        return distributed.weighted_cross_entropy(logits, y, global_size, rt.world_size, cfg.label_smoothing)

    step = make_step(forward, loss_of, model, optimizer, masks, device, cfg.precision, cfg.cuda_graphs)
    search = None
    if job.early_bird is not None:  # an early-bird search: detectors at every epoch start
        search = early_bird.Search(job.early_bird, model, -(-info.num_train // cfg.batch_size), out, write=writer)
        if ckpt is not None:
            search.load_state(ckpt["early_bird"])

    # --- hooks: rewinding points, evaluation, checkpoints -------------------------------------
    eval_bs = max(cfg.batch_size, 256)

    def run_eval(it: int) -> None:
        """Every rank: its slice of each split (read and decoded by this rank alone), the sums
        all-reduced in evaluate()."""
        if distributed.in_gang(rt.world_size):
            distributed.broadcast_buffers(model)  # one network: rank 0's running statistics
        for split, limit in (("test", None), ("train", cfg.eval_train_examples)):
            batches = data.eval_batches(split, eval_bs, limit, Shard(rt.rank, rt.world_size))
            loss, acc = evaluate(model, batches, device, cfg.precision, channels_last, rt.world_size)
            row = MetricRow(iteration=it, split=split, loss=loss, accuracy=acc)
            metrics.append(row)
            if rt.on_metric is not None and writer:
                rt.on_metric(row)

    def save_checkpoint(next_it: int) -> None:
        if not writer:
            return
        checkpoint.sync_dir(out)  # the outputs so far: a resumed job does not write them again
        checkpoint.save(
            {
                "fingerprint": fp,
                "iteration": next_it,
                "model": checkpoint.state_dict_cpu(model),
                "optimizer": optimizer.state_dict(),
                "mask": mask,
                "metrics": [dataclasses.asdict(m) for m in metrics],
                "rng": {"cpu": torch.get_rng_state()},
                **({"early_bird": search.state()} if search is not None else {}),
            },
            ckpt_path,
        )

    def save_rewind_point(it: int) -> None:
        if writer and it in job.save_iters:
            checkpoint.save(checkpoint.state_dict_cpu(model), os.path.join(out, rewind_file(it)), durable=False)

    def hooks_at(it: int) -> None:
        save_rewind_point(it)
        due = it == job.start_iter or (cfg.eval_every > 0 and it % cfg.eval_every == 0)
        if due and it < job.stop_iter:
            run_eval(it)

    # --- the loop -------------------------------------------------------------------------------
    # this rank's slice of each global batch (all of it on one rank): a file-backed stream reads
    # and decodes the slice's files only (trainers/data/bundle.py, Shard)
    stream = data.train_stream(job.data_seed, cfg.batch_size, start, Shard(rt.rank, rt.world_size))
    last_ckpt_time = time.time()
    model.train()
    end = job.stop_iter
    nonfinite = NonFinite(device, rt.world_size)
    for it in range(start, job.stop_iter):
        if search is not None and distributed.in_gang(rt.world_size) and it % search.ipe == 0:
            # the detectors decide when the job stops: every rank must rank the same scores
            distributed.check_same(f"the early-bird scores at iteration {it}",
                                   distributed.tensors_digest({"scores": search.scores(model)}), rt.world_size, device)
        if search is not None and search.at_epoch_start(it, model):
            end = it  # every detector has fired: the search stops here (stop: at_detection)
            break
        hooks_at(it)
        x, y = next(stream)
        # forward, backward, gradient masks (pruned weights stay exactly zero), optimizer step
        nonfinite.see(step(to_model_input(x, channels_last, cfg.precision), y, lr_for(job, it)), it)
        done = it + 1
        by_iters = paths.checkpoint_every_iters > 0 and done % paths.checkpoint_every_iters == 0
        by_time = time.time() - last_ckpt_time >= paths.checkpoint_every_seconds
        eval_due = cfg.eval_every > 0 and done % cfg.eval_every == 0
        # a diverged job stops: every further step would train on NaN (by_time differs between
        # ranks, so on N ranks only the iteration-based checkpoints ask for a read)
        if nonfinite.first(done, eval_due, by_iters or (by_time and rt.world_size == 1)) is not None:
            end = done
            break
        if done < job.stop_iter and (by_iters or by_time):
            save_checkpoint(done)
            last_ckpt_time = time.time()
        if rt.on_step is not None:
            rt.on_step(done)

    # --- the end: final weights, final evaluation, result ----------------------------------------
    nonfinite_iter = nonfinite.first(end, eval_due=True, checkpoint_due=True)  # (every rank: a collective)
    save_rewind_point(end)
    run_eval(end)  # every rank: a sharded evaluation
    if not writer:  # the other ranks join rank 0 for a replay of missing rewinding points
        return add_missing_rewind_points(job, out, None, rt)
    final = {m.split: m for m in metrics if m.iteration == end}
    final_weights = checkpoint.state_dict_cpu(model)
    checkpoint.save(final_weights, os.path.join(out, WEIGHTS), durable=False)
    correlation, layers = layer_rows(initial, final_weights, _prunable_part(job, model, mask))
    result = TrainResult(
        metrics=metrics,
        test_loss=final["test"].loss,
        test_accuracy=final["test"].accuracy,
        train_loss=final["train"].loss,
        train_accuracy=final["train"].accuracy,
        density=density(_prunable_part(job, model, mask)),
        start_iter=job.start_iter,
        end_iter=end,
        wall_seconds=time.time() - t_start,
        device=device_name(device),
        weights_path=os.path.join(out, WEIGHTS),
        mask_path=os.path.join(out, MASK),
        saved_weights=saved_rewind_points(job, out),
        resumed_from=ckpt["iteration"] if ckpt is not None else None,
        deterministic=applied(cfg.deterministic, device),
        weight_correlation=correlation,
        layers=layers,
        **structured_measures(job, model, mask, info.input_shape),
        early_bird=search.finish(end, model) if search is not None else None,
        nonfinite_iter=nonfinite_iter,
        **collapse(model, mask, _prunable_part(job, model, mask), info.input_shape),
    )
    checkpoint.sync_dir(out)  # every output on disk before result.json says the job finished
    checkpoint.save_json(dataclasses.asdict(result), result_path)
    if os.path.exists(ckpt_path):
        os.unlink(ckpt_path)  # the job is complete; its result supersedes the checkpoint
    # a rewinding point added while this run was interrupted past it: replay up to it
    return add_missing_rewind_points(job, out, result, rt)


class NonFinite:
    """The first iteration whose training loss was not finite, for each loss a step returns: one
    for a job, one per member for a stacked pack (trainers/packed.py), which stops its members
    one by one. Tracked on the device; reading it back is a host synchronisation, which a CUDA
    step never otherwise makes (trainers/graphed.py), so there it is read every READ_EVERY
    iterations and before any evaluation or checkpoint (no NaN model is evaluated or saved as a
    resumable state); on a CPU it is read every iteration. On N ranks each rank saw only its
    slice's loss: the ranks agree on the earliest (a minimum over the group) at iterations that
    are the same for all of them."""

    READ_EVERY = 32
    NEVER = 2 ** 62

    def __init__(self, device: torch.device, world_size: int, members: int | None = None) -> None:
        shape = () if members is None else (members,)
        self.at = torch.full(shape, self.NEVER, dtype=torch.int64, device=device)
        self.every = 1 if device.type == "cpu" else self.READ_EVERY
        self.world_size = world_size

    def see(self, loss: torch.Tensor, it: int) -> None:
        self.at = torch.where(torch.isfinite(loss) | (self.at < self.NEVER), self.at, it)

    def firsts(self, done: int, eval_due: bool, checkpoint_due: bool) -> list[int | None] | None:
        """Each loss's first non-finite iteration (None: finite so far), or None when no read
        is due after iteration `done`."""
        if not (done % self.every == 0 or eval_due or checkpoint_due):
            return None
        at = self.at
        if self.world_size > 1:
            at = distributed.all_reduce_min(at)
        return [None if v == self.NEVER else v for v in at.reshape(-1).tolist()]

    def first(self, done: int, eval_due: bool, checkpoint_due: bool) -> int | None:
        """A job's one loss: its first non-finite iteration, when read and not finite."""
        read = self.firsts(done, eval_due, checkpoint_due)
        return None if read is None else read[0]


def _prunable_part(job: TrainJob, model: torch.nn.Module, mask: dict) -> dict:
    """The mask's prunable Conv/Linear weights: density is over these, whatever else a structured
    mask covers (biases, BatchNorm, the input slices of ignored layers)."""
    ignore = job.prune.ignore if job.prune is not None else job.at_init.ignore if job.at_init is not None else ()
    names = set(prunable_names(model, ignore))
    part = {k: v for k, v in mask.items() if k in names}
    return part or mask


def collapse(model: torch.nn.Module, mask: dict, prunable: dict, input_shape) -> dict:
    """Whether the mask disconnects the network (layer collapse), and why."""
    from trainers.connectivity import UNMEASURED, disconnection

    why = disconnection(model, mask, prunable, tuple(input_shape))
    if why == UNMEASURED:
        return {"disconnected": None, "disconnection": None}
    return {"disconnected": why is not None, "disconnection": why}


def structured_measures(job: TrainJob, model: torch.nn.Module, mask: dict, input_shape) -> dict:
    """flops_fraction for every run; channel_density for a channel-granularity run, and for a run
    on a channel mask made elsewhere (an early-bird retrain: `job.channel_report`)."""
    out: dict = {"flops_fraction": structure.flops_fraction(model, mask, tuple(input_shape))}
    if job.prune is not None and job.prune.granularity == "channel":
        mode, ignore = job.prune.groups, job.prune.ignore
    elif job.channel_report is not None:
        mode, ignore = job.channel_report
    else:
        return out
    groups = structure.channel_groups(model, mode, ignore)
    out["channel_density"] = structure.channel_density(structure.alive_channels(groups, mask))
    return out


def add_missing_rewind_points(job: TrainJob, out: str, result: TrainResult | None, rt: Runtime) -> TrainResult | None:
    """A finished dense run asked for a rewinding point it did not save (the sweep grew a new k).

    The job's id does not cover its rewinding points, so that adding a k keeps every finished
    job. Replay the run from the start up to the last missing point in a scratch directory and
    keep only the missing W_k: weights.pt and everything else already stored stay untouched.

    On a gang every rank calls this (`result` is rank 0's; None elsewhere): rank 0 decides what
    is missing and the gang replays it together, each rank at its own slice of the job's
    global batch, as the run itself was trained (never one rank at the whole batch, which
    would not fit where the job needed N GPUs). Returns None on the other ranks.
    """
    writer = rt.rank == 0
    missing: list[int] = []
    scratch = os.path.join(out, ".replay")
    if writer:
        missing = sorted(k for k in job.save_iters if not os.path.exists(os.path.join(out, rewind_file(k))))
        if job.early_bird is not None or result.nonfinite_iter is not None:
            # a search that stopped at detection, or a diverged job, never reaches the later points
            missing = [k for k in missing if k <= result.end_iter]
        if missing and missing[0] == job.start_iter == 0 and job.prune is None and job.reinit_seed is None:
            # W_0 is the initialisation itself: no iteration to replay (a replay would end at 0)
            from trainers.data.ondisk import describe

            info = describe(job.train.data)
            model = build_model(job.train.model, info.input_shape, info.num_classes, seed=job.init_seed,
                                bn_scale_init=job.train.bn_scale_init)
            checkpoint.save(checkpoint.state_dict_cpu(model), os.path.join(out, rewind_file(0)))
            missing = missing[1:]
        if missing:  # before the broadcast, so that no rank enters the scratch directory first
            shutil.rmtree(scratch, ignore_errors=True)  # an earlier replay that died: its checkpoint is not ours
    missing = distributed.from_rank0(missing, rt.world_size, rt.device)
    if missing:
        replay = dataclasses.replace(job, end_iter=missing[-1], save_iters=tuple(missing))
        train(replay, TrainPaths(out_dir=scratch), dataclasses.replace(rt, on_metric=None))  # not this job's metrics
        if writer:
            for k in missing:
                os.replace(os.path.join(scratch, rewind_file(k)), os.path.join(out, rewind_file(k)))
            shutil.rmtree(scratch)
    if not writer:
        return None
    if missing or result.saved_weights != saved_rewind_points(job, out):
        result.saved_weights = saved_rewind_points(job, out)
        checkpoint.save_json(dataclasses.asdict(result), os.path.join(out, RESULT))
    return result


def saved_rewind_points(job: TrainJob, out: str) -> dict[int, str]:
    """The W_k files this job's directory holds, among its rewinding points."""
    paths = {k: os.path.join(out, rewind_file(k)) for k in sorted(job.save_iters)}
    return {k: p for k, p in paths.items() if os.path.exists(p)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def result_from_json(d: dict) -> TrainResult:
    d = dict(d)
    d["metrics"] = [MetricRow(**m) for m in d["metrics"]]
    d["saved_weights"] = {int(k): v for k, v in d["saved_weights"].items()}
    d["layers"] = [LayerRow(**r) for r in d.get("layers", [])]
    return TrainResult(**d)

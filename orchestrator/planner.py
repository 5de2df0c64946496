"""The planner: one validated ExperimentSpec -> the whole job graph, before anything runs.

Pruning is a deterministic function of its inputs, so every job of every level is known up
front. The graph (DESIGN.md "Jobs and the graph"):

- Dense run (level 0): one per (replicate, data seed), 0 -> T, saving W_k for every rewinding
  point k of the sweep. It is shared by every lineage of the replicate.
- Lineage (replicate, k, family), levels 1..L. Level l prunes the final weights of level l-1
  (for l = 1 the dense run) and then, by family:
    rewind        weights m_l * W_k (the dense run's w_<k>.pt), train k -> T.
    lr_rewind     the parent's final weights, LR schedule restarted at k, train k -> T.
    finetune      the parent's final weights, T - k more iterations at pruning.finetune_lr.
    random_prune  (control; open_lth's randomly_prune) at level l, IMP's mask of the same
                  lineage at level l (the rewind job's mask.pt) shuffled within each layer
                  (PruneConfig strategy "random", prune_seed from replicate, k and level), so
                  per-layer densities equal IMP's for either strategy; weights m * W_k, train
                  k -> T. These jobs do not chain among themselves.
    random_reinit (control; Frankle & Carbin's "random reinitialization") IMP's mask with
                  fresh weights: level l consumes the *rewind* lineage's level l-1 weights and
                  mask, so pruning them yields exactly the rewind lineage's mask m_l, and sets
                  reinit_seed (from replicate and level) so the weights are a fresh draw.
                  These jobs do not chain among themselves. Meta: retrain="reinit".
- Branches (rewind lineages only; the interpolation tables have no retrain column): at each
  branch level l, children are the level job with data_seed = each branch seed. The child
  whose seed is the lineage's seed IS the level job (same description, same id). At level 0
  a child starts at k from W_k with the dense mask; at k = 0 the child with the lineage's
  seed is the dense run itself.
- Interpolate: one job per pair of children of a (replicate, k, level), children in seed
  order (so adding seeds keeps the old pairs' ids).
- Noise floor (sweep.branch.noise_floor): at each branch point, two more children (role
  "noise") with the first branch seed, the branch's inputs, non-deterministic kernels and
  noise_replica 1 and 2, and one interpolate job for that pair: its barrier is kernel noise
  alone. Interpolated with the same (deterministic) evaluation as every pair.

- Ticket transfer (`transfer`): the source's jobs the tickets need, with the source
  experiment's ids, and one job per replicate, source level and control starting from the
  source's mask and W_k (orchestrator/transfer_plan.py).

Replicates are named by their init seed (JobMeta.replicate = init seed). The dense run's
meta has rewind_iter 0 (it serves every k).
"""
from __future__ import annotations

import fnmatch
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Any

from orchestrator.channel_plan import check_slimming, planned_channel_densities
from orchestrator.early_bird_plan import add_early_bird
from orchestrator.transfer_plan import add_transfer
from orchestrator.experiment import config_hash
from orchestrator.floor import check_floor
from orchestrator.graph import Job, JobMeta, Plan
from orchestrator.jobid import derived_seed, job_id
from orchestrator.limits import MAX_JOBS
from orchestrator.spec import ExperimentSpec, SpecError
from trainers.job_files import MASK, WEIGHTS, rewind_file
from trainers.jobs import AtInitConfig, InterpolateJob, TrainConfig, TrainJob
from trainers.model_catalog import conv_linear_weights
from trainers.prune_counts import DATA_METHODS, planned_layer_remaining, planned_remaining, select_prunable


def planned_densities(spec: ExperimentSpec) -> list[float]:
    """Density at levels 0..L, from the model's weight counts alone (model_catalog.py: no model
    is built and torch is not imported where the catalog holds the model and data shape).
    pruning.granularity channel: the channel density (orchestrator/channel_plan.py), exact; the
    weight density of a global channel level depends on which layers lose channels, and is
    measured (runs.density)."""
    if spec.pruning.granularity == "channel":
        return planned_channel_densities(spec)
    check_slimming(spec)
    sizes = prunable_sizes(spec)
    check_floor(sizes, spec, "weight", "prunable tensor")
    return [r / sum(sizes.values()) for r in planned_remaining(sizes, spec.prune_config(), spec.pruning.levels)]


def prunable_sizes(spec: ExperimentSpec) -> dict[str, int]:
    """Prunable tensor name -> number of weights, in state_dict order, from the model catalog."""
    info = spec.data_info
    try:
        weights = conv_linear_weights(spec.model, tuple(info.input_shape), int(info.num_classes))
    except ValueError as e:
        raise SpecError("model", f"{spec.model!r} cannot take {spec.data.name!r} data: {e}") from None
    try:
        sizes = {n: weights[n] for n in select_prunable(list(weights), spec.pruning.ignore)}
    except ValueError as e:
        raise SpecError("pruning.ignore", str(e)) from None
    if sum(sizes.values()) == 0:
        raise SpecError("pruning.ignore", "nothing left to prune: every Conv/Linear weight is ignored")
    for pattern in spec.pruning.layer_fractions:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in sizes):
            raise SpecError(f"pruning.layer_fractions.{pattern}", f"matches no prunable weight; they are {', '.join(sizes)}")
    return sizes


class _Builder:
    def __init__(self, spec: ExperimentSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.config_hash = config_hash(spec)
        self.cfg: TrainConfig = spec.train_config()  # ONE object: jobid memoises its plain form
        self.cfg_noisy: TrainConfig = replace(self.cfg, deterministic=False)  # the noise-floor pairs'
        self.noise_floor = spec.sweep.branch.noise_floor
        self.T = self.cfg.iterations
        self.ks = spec.rewind_iters
        self.ds = spec.sweep.data_seed
        self.levels = spec.pruning.levels
        self.density = planned_densities(spec)
        self.prune = spec.prune_config()
        self.prune_random = spec.prune_config("random")
        self.at_init_keep = self._at_init_counts() if spec.pruning.at_init is not None else {}
        b = spec.sweep.branch
        self.interp = InterpolateJob(
            train=self.cfg,
            num_alphas=b.num_alphas,
            splits=tuple(b.splits),
            train_examples=b.train_examples,
            bn_reset=b.bn_reset,
            bn_reset_batches=b.bn_reset_batches,
        )
        self.jobs: dict[str, Job] = {}

    def _at_init_counts(self) -> dict[int, tuple[int, ...]]:
        """level -> the counts pruning at init keeps: IMP's planned remaining total (scope global)
        or magnitude_layerwise's per-tensor counts (scope layerwise)."""
        p = self.spec.pruning
        sizes = prunable_sizes(self.spec)
        if p.at_init.scope == "global":
            totals = planned_remaining(sizes, self.prune, self.levels)
            return {lv: (totals[lv],) for lv in range(1, self.levels + 1)}
        out = {}
        for lv in range(1, self.levels + 1):
            counts = planned_layer_remaining(sizes, p.fraction, lv)
            if min(counts) < 1:
                empty = list(sizes)[counts.index(min(counts))]
                raise SpecError("pruning.at_init.scope", f"layerwise: level {lv} leaves no weight in {empty}; "
                                f"at most {lv - 1} levels, or scope global")
            out[lv] = tuple(counts)
        return out

    def add(self, kind: str, spec: Any, inputs: dict[str, tuple[str, str]], meta: JobMeta) -> str:
        jid = job_id(kind, spec, inputs)
        if jid not in self.jobs and len(self.jobs) >= MAX_JOBS:  # each count is bounded, their product is not
            raise SpecError("sweep", f"the plan passes {MAX_JOBS:,} jobs (sweep.replicates x rewinding points x "
                                     "pruning.levels x lineages, and the branches' children and pairs): split "
                                     "it into several experiments")
        if jid not in self.jobs:  # equal work, equal id: the first description stays
            parents = tuple(dict.fromkeys(p for p, _ in inputs.values()))
            self.jobs[jid] = Job(id=jid, kind=kind, spec=spec, parents=parents, inputs=inputs, meta=meta)
        return jid

    def meta(self, role, r, k, level, seed, retrain, strategy, parent=None, pair=None) -> JobMeta:
        return JobMeta(
            experiment=self.name,
            role=role,
            replicate=r,
            rewind_iter=k,
            level=level,
            data_seed=seed,
            retrain=retrain,
            prune_strategy=strategy,
            density=self.density[level],
            parent_job_id=parent,
            pair=pair,
            config_hash=self.config_hash,
            granularity=self.spec.pruning.granularity,
        )

    def build(self) -> dict[str, Job]:
        spec = self.spec
        families = list(spec.pruning.retrain)
        random_prune = "random_prune" in spec.pruning.controls
        reinit = "random_reinit" in spec.pruning.controls
        reinit_signs = "random_reinit_signs" in spec.pruning.controls
        # magnitude_increase ranks by |w_T| - |w_k|: every pruning job also reads W_k
        needs_w_k = self.prune.criterion != "magnitude"
        branch_levels = set(spec.branch_levels)
        seeds = sorted(spec.sweep.branch.seeds)
        strategy = self.prune.strategy
        for r in spec.init_seeds:
            dense_job = TrainJob(train=self.cfg, init_seed=r, data_seed=self.ds, save_iters=tuple(sorted(self.ks)))
            dense = self.add("train", dense_job, {}, self.meta("level", r, 0, 0, self.ds, "rewind", strategy))
            for k in self.ks:
                w_k = (dense, rewind_file(k))
                if 0 in branch_levels:
                    children = []
                    if self.noise_floor and seeds:
                        self.noise_pair(TrainJob(train=self.cfg, init_seed=r, data_seed=seeds[0], start_iter=k),
                                        {"rewind_weights": w_k, "parent_mask": (dense, MASK)},
                                        r, k, 0, "rewind", strategy, dense)
                    for s in seeds:
                        if s == self.ds and k == 0:
                            children.append(dense)
                            continue
                        child = TrainJob(train=self.cfg, init_seed=r, data_seed=s, start_iter=k)
                        children.append(
                            self.add(
                                "train",
                                child,
                                {"rewind_weights": w_k, "parent_mask": (dense, MASK)},
                                self.meta("branch", r, k, 0, s, "rewind", strategy, parent=dense),
                            )
                        )
                    self.pairs(children, r, k, 0, strategy)
                rewind_chain: list[str] = [dense]
                for family in families:
                    parent = dense
                    for level in range(1, self.levels + 1):
                        job, inputs, retrain, strat = self.level_job(family, r, k, level, parent, w_k)
                        meta = self.meta("level", r, k, level, self.ds, retrain, strat, parent=parent)
                        jid = self.add("train", job, inputs, meta)
                        if family == "rewind":
                            rewind_chain.append(jid)
                            if level in branch_levels:
                                children = [
                                    self.add(
                                        "train",
                                        replace(job, data_seed=s),
                                        inputs,
                                        self.meta("branch", r, k, level, s, retrain, strat, parent=parent),
                                    )
                                    for s in seeds
                                ]
                                self.pairs(children, r, k, level, strat)
                                if self.noise_floor and seeds:
                                    self.noise_pair(replace(job, data_seed=seeds[0]), inputs, r, k, level, retrain, strat, parent)
                        parent = jid
                if random_prune:
                    for level in range(1, self.levels + 1):
                        imp = rewind_chain[level]
                        job = TrainJob(
                            train=self.cfg,
                            init_seed=r,
                            data_seed=self.ds,
                            start_iter=k,
                            prune=self.prune_random,
                            prune_seed=derived_seed("random_prune", r, k, level),
                        )
                        inputs = {"parent_mask": (imp, MASK), "rewind_weights": w_k}
                        # parent_job_id: the previous level, as for every level job (the training
                        # budget is then IMP's at this level); the mask comes from IMP's level l
                        prev = rewind_chain[level - 1]
                        meta = self.meta("level", r, k, level, self.ds, "rewind", "random", parent=prev)
                        self.add("train", job, inputs, meta)
                if reinit:
                    for level in range(1, self.levels + 1):
                        prev = rewind_chain[level - 1]
                        job = TrainJob(
                            train=self.cfg,
                            init_seed=r,
                            data_seed=self.ds,
                            start_iter=k,
                            prune=self.prune,
                            reinit_seed=derived_seed("random_reinit", r, level),
                        )
                        inputs = {"parent_weights": (prev, WEIGHTS), "parent_mask": (prev, MASK)}
                        if needs_w_k:
                            inputs["rewind_weights"] = w_k
                        self.add("train", job, inputs, self.meta("level", r, k, level, self.ds, "reinit", strategy, parent=prev))
                if reinit_signs:  # Zhou et al.: random_reinit's fresh draw (same seed), W_k's signs
                    for level in range(1, self.levels + 1):
                        prev = rewind_chain[level - 1]
                        job = TrainJob(train=self.cfg, init_seed=r, data_seed=self.ds, start_iter=k, prune=self.prune,
                                       reinit_seed=derived_seed("random_reinit", r, level), reinit_keep_signs=True)
                        inputs = {"parent_weights": (prev, WEIGHTS), "parent_mask": (prev, MASK), "rewind_weights": w_k}
                        self.add("train", job, inputs,
                                 self.meta("level", r, k, level, self.ds, "reinit_signs", strategy, parent=prev))
                if spec.pruning.at_init is not None and k in spec.pruning.at_init.at_iters:
                    self.at_init_lineages(r, k, dense, w_k)
            if spec.pruning.early_bird is not None:
                add_early_bird(self, r)
        if spec.transfer is not None:
            source = spec.transfer.source_spec  # planned as its own experiment plans it: the same ids
            add_transfer(self, _Builder(source).build(), planned_densities(source))
        return self.jobs

    def at_init_lineages(self, r: int, k: int, dense: str, w_k: tuple[str, str]) -> None:
        """Pruning at initialization: per method and level, one job scoring W_k at the level's
        planned count then training k -> T, and one job per ablation (shuffle: its mask shuffled
        within each layer; reinit: its mask, fresh weights; invert: the lowest scores kept)."""
        a = self.spec.pruning.at_init
        total = sum(prunable_sizes(self.spec).values())
        for method in a.methods:
            data = method in DATA_METHODS
            for level in range(1, self.levels + 1):
                cfg = AtInitConfig(
                    method=method,
                    keep=self.at_init_keep[level],
                    scope=a.scope,
                    ignore=tuple(self.spec.pruning.ignore),
                    seed=derived_seed("random_init", r, k, level) if method == "random_init" else 0,
                    examples_per_class=a.scoring.examples_per_class if data else 0,
                    bn_mode=a.scoring.bn_mode if data else "eval",
                    sample=a.scoring.sample if data else "class_balanced",
                    temperature=a.grasp.temperature if method.startswith("grasp") else 0.0,
                    iterations=a.synflow.iterations if method == "synflow" else 1,
                    schedule=a.synflow.schedule if method == "synflow" else "exponential",
                )
                base = TrainJob(train=self.cfg, init_seed=r, data_seed=self.ds, start_iter=k, at_init=cfg)
                variants = [("rewind", base)]
                if "shuffle" in a.ablations:
                    variants.append(("pai_shuffle", replace(base, at_init=replace(cfg, shuffle=True),
                                                            prune_seed=derived_seed("pai_shuffle", r, k, level))))
                if "reinit" in a.ablations:
                    variants.append(("pai_reinit", replace(base, reinit_seed=derived_seed("pai_reinit", r, k, level))))
                if "invert" in a.ablations:
                    variants.append(("pai_invert", replace(base, at_init=replace(cfg, invert=True))))
                density = sum(cfg.keep) / total
                for retrain, job in variants:
                    meta = replace(self.meta("pai", r, k, level, self.ds, retrain, method, parent=dense), density=density)
                    self.add("train", job, {"rewind_weights": w_k}, meta)

    def level_job(self, family: str, r: int, k: int, level: int, parent: str, w_k: tuple[str, str]):
        parent_in = {"parent_weights": (parent, WEIGHTS), "parent_mask": (parent, MASK)}
        if self.prune.criterion != "magnitude":  # magnitude_increase: |w_T| - |w_k|
            parent_in["rewind_weights"] = w_k
        base = dict(train=self.cfg, init_seed=r, data_seed=self.ds, start_iter=k, prune=self.prune)
        if family == "rewind":
            return TrainJob(**base), {**parent_in, "rewind_weights": w_k}, "rewind", self.prune.strategy
        if family == "lr_rewind":
            return TrainJob(**base, retrain="lr_rewind"), parent_in, "lr_rewind", self.prune.strategy
        if family == "finetune":
            job = TrainJob(**base, retrain="finetune", finetune_lr=self.spec.pruning.finetune_lr)
            return job, parent_in, "finetune", self.prune.strategy
        raise AssertionError(family)

    def noise_pair(self, child: TrainJob, inputs: dict, r: int, k: int, level: int, retrain: str, strategy: str,
                   parent: str) -> None:
        """Two runs of `child` with non-deterministic kernels, and their interpolation."""
        twins = [
            self.add("train", replace(child, train=self.cfg_noisy, noise_replica=i), inputs,
                     self.meta("noise", r, k, level, child.data_seed, retrain, strategy, parent=parent))
            for i in (1, 2)
        ]
        self.pairs(twins, r, k, level, strategy)

    def pairs(self, children: list[str], r: int, k: int, level: int, strategy: str) -> None:
        for i, a in enumerate(children):
            for b in children[i + 1 :]:
                inputs = {"weights_a": (a, WEIGHTS), "weights_b": (b, WEIGHTS), "mask": (a, MASK)}
                meta = self.meta("interpolate", r, k, level, None, "rewind", strategy, pair=(a, b))
                self.add("interpolate", self.interp, inputs, meta)


def _cost(job: Job) -> int:
    """Training iterations the job runs (interpolation is cheap next to training)."""
    if job.kind == "train":
        return job.spec.stop_iter - job.spec.start_iter
    return 0


def _with_priorities(jobs: dict[str, Job], policy: str) -> dict[str, Job]:
    if policy == "breadth_first":
        prio = {jid: -float(j.meta.level) for jid, j in jobs.items()}
    else:  # longest_path: the iterations on the longest path from the job to a leaf
        children: dict[str, list[str]] = defaultdict(list)
        for jid, j in jobs.items():
            for p in j.parents:
                children[p].append(jid)
        prio = {}
        for jid in reversed(list(jobs)):  # reverse topological: children first
            below = max((prio[c] for c in children.get(jid, ())), default=0.0)
            prio[jid] = float(_cost(jobs[jid])) + below
    return {jid: replace(j, priority=prio[jid]) for jid, j in jobs.items()}


def plan(spec: ExperimentSpec) -> Plan:
    """The whole job graph of `spec`, jobs in a topological order (parents first)."""
    jobs = _Builder(spec).build()
    return Plan(experiment=spec.name, jobs=_with_priorities(jobs, spec.scheduler.priority))


def required_outputs(plan: Plan) -> dict[str, set[str]]:
    """job id -> the artifact files its children read (e.g. the dense run's w_<k>.pt).

    A done job that lacks one of them (a rewinding point added to a grown sweep: `save_iters`
    is not part of the id) must be run again before its children can run.
    """
    need: dict[str, set[str]] = defaultdict(set)
    for job in plan.jobs.values():
        for pid, fname in job.inputs.values():
            need[pid].add(fname)
    return dict(need)


def summarize(plan: Plan) -> dict:
    """Sizes of the graph for `lth plan` (a table) and `lth plan --json`."""
    train_by_level: Counter = Counter()
    interp_by_level: Counter = Counter()
    by_role: Counter = Counter()
    by_family: Counter = Counter()
    at_init: Counter = Counter()
    density: dict[int, float] = {}
    density_of = "weights"  # what a level's density counts: a channel-granularity sweep's is of channels
    lineages = set()
    dense = 0
    iterations = 0
    for job in plan.jobs.values():
        m = job.meta
        by_role[m.role] += 1
        if job.kind == "train":
            train_by_level[m.level] += 1
            iterations += _cost(job)
            if m.level == 0 and m.role == "level":
                dense += 1
            if m.level >= 1 and m.role == "level":
                # named as the config names them: pruning.retrain modes and pruning.controls
                family = ("random_prune" if m.prune_strategy == "random" else "random_reinit" if m.retrain == "reinit"
                          else "random_reinit_signs" if m.retrain == "reinit_signs" else m.retrain)
                by_family[family] += 1
                lineages.add((m.replicate, m.rewind_iter, family))
            if m.role == "pai":  # named as the config names them: method, and ablation if any
                at_init[m.prune_strategy if m.retrain == "rewind" else f"{m.prune_strategy}+{m.retrain.removeprefix('pai_')}"] += 1
            elif m.prune_strategy != "random" and m.retrain not in ("reinit", "reinit_signs") and m.role != "early_bird":
                density.setdefault(m.level, m.density)
                if getattr(getattr(job.spec, "prune", None), "granularity", "weight") == "channel":
                    density_of = "channels"
        else:
            interp_by_level[m.level] += 1
    levels = sorted(set(train_by_level) | set(interp_by_level))
    return {
        "experiment": plan.experiment,
        "jobs": len(plan.jobs),
        "by_kind": dict(sorted(plan.by_kind().items())),
        "by_role": dict(sorted(by_role.items())),
        "level_jobs_by_family": dict(sorted(by_family.items())),
        "at_init_jobs_by_method": dict(sorted(at_init.items())),
        "dense_runs": dense,
        "lineages": len(lineages),
        "pairs": sum(interp_by_level.values()),
        "training_iterations": iterations,
        "density_of": density_of,
        "levels": [
            {
                "level": lev,
                "density": density.get(lev),
                "train": train_by_level.get(lev, 0),
                "interpolate": interp_by_level.get(lev, 0),
            }
            for lev in levels
        ],
    }

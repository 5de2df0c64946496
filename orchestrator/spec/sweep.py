"""The sweep section, the lottery-ticket axes: replicates, rewinding points, branches.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from orchestrator import limits as L
from orchestrator.spec.base import Seed, SpecError, _at_most, _Model, _SEED_RANGE, _unique


class BranchSpec(_Model):
    seeds: list[Seed] = Field(default_factory=list, max_length=L.MAX_BRANCH_SEEDS, description='data-order seeds of the children made at each branch point (instability analysis); empty: no branches' + _at_most(L.MAX_BRANCH_SEEDS) + ' seeds')
    levels: Union[list[int], Literal["all"]] = Field("all", description='pruning levels at which to branch (0: dense), or all')
    # 31 in Frankle et al. 2020; each point is one evaluation per split, so 1001 (a step of
    # 0.001) is far beyond any resolution a barrier needs, and bounds a typo's cost.
    num_alphas: int = Field(31, ge=2, le=1001, description='evenly spaced interpolation points in [0, 1] on the path between two children (both ends included)' + _at_most(1001))
    splits: list[Literal["test", "train"]] = Field(default_factory=lambda: ["test", "train"], min_length=1, description='data on which the interpolation path is evaluated: test, train')
    train_examples: int = Field(10_000, gt=0, le=L.MAX_EXAMPLES, description='training examples used to evaluate the interpolation path on train' + _at_most(L.MAX_EXAMPLES))
    bn_reset: bool = Field(False, description='recompute BatchNorm statistics at each interpolated point before evaluating it')
    bn_reset_batches: int = Field(8, gt=0, le=L.MAX_BN_BATCHES, description='training batches used for each BatchNorm reset' + _at_most(L.MAX_BN_BATCHES))
    noise_floor: bool = Field(
        False,
        description="add at each branch point a pair of children with the first branch seed, both run with "
        "non-deterministic kernels: their barrier is what kernel noise alone produces, reported beside the "
        "data-order barrier (on a CPU the pair is identical and its barrier 0)",
    )

    @model_validator(mode="after")
    def _lists(self) -> "BranchSpec":
        _unique(self.seeds, "sweep.branch.seeds")
        if len(self.seeds) == 1 and not self.noise_floor:
            raise SpecError(
                "sweep.branch.seeds",
                f"one seed ({self.seeds[0]}) makes children that are never compared: instability compares them "
                "in pairs, so give at least two seeds (or none, for no branches)",
            )
        _unique(self.splits, "sweep.branch.splits")
        if self.levels != "all":
            _unique(self.levels, "sweep.branch.levels")
            for i, lev in enumerate(self.levels):
                if lev < 0:
                    raise SpecError(f"sweep.branch.levels[{i}]", f"a level is >= 0, got {lev}")
        return self


class SweepSpec(_Model):
    replicates: int | None = Field(None, ge=1, le=L.MAX_REPLICATES, description='number of initialisations (init seeds 0..n-1); give this or init_seeds' + _at_most(L.MAX_REPLICATES))
    init_seeds: list[Seed] | None = Field(None, min_length=1, max_length=L.MAX_REPLICATES, description='explicit init seeds, one replicate each (resolved from replicates when absent)' + _at_most(L.MAX_REPLICATES) + ' seeds')
    rewind_iters: list[Annotated[int, Field(le=L.MAX_ITERATIONS)]] | None = Field(None, min_length=1, max_length=L.MAX_REWIND_POINTS, description='rewinding points k in iterations (0: the original IMP); give this or rewind_epochs' + _at_most(L.MAX_REWIND_POINTS) + ' points')
    rewind_epochs: list[float] | None = Field(None, min_length=1, max_length=L.MAX_REWIND_POINTS, description='rewinding points in epochs (resolved into rewind_iters)' + _at_most(L.MAX_REWIND_POINTS) + ' points')
    data_seed: Seed = Field(0, description='data-order seed of the lineages (the dense run and every level)' + _SEED_RANGE)
    branch: BranchSpec = Field(default_factory=BranchSpec, description='branches and their linear interpolation (instability analysis)')

    @model_validator(mode="after")
    def _one_of_each(self) -> "SweepSpec":
        if (self.replicates is None) == (self.init_seeds is None):
            raise SpecError("sweep.replicates", "give exactly one of sweep.replicates and sweep.init_seeds")
        if (self.rewind_iters is None) == (self.rewind_epochs is None):
            raise SpecError("sweep.rewind_iters", "give exactly one of sweep.rewind_iters and sweep.rewind_epochs")
        if self.init_seeds is not None:
            _unique(self.init_seeds, "sweep.init_seeds")
        return self

    def seeds(self) -> list[int]:
        """The replicates' init seeds (a replicate is named by its init seed)."""
        return list(self.init_seeds) if self.init_seeds is not None else list(range(self.replicates or 0))

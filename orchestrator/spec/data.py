"""The data section: which data set, where it lies, its size and progressive resizing.
"""
from __future__ import annotations

from pydantic import Field

from orchestrator import limits as L
from orchestrator.spec.base import Seed, _at_most, _Model, _SEED_RANGE
from trainers.data.catalog import DESCRIPTIONS
from trainers.jobs import DataConfig


class DataSpec(_Model):
    name: str = Field("digits", description=f"data set: one of {', '.join(DESCRIPTIONS)} (trainers/data/catalog.py)")
    root: str | None = Field(None, description='directory holding the data: cifar-10-batches-py/, an ImageFolder tree, or train.beton/test.beton (ffcv_*); unused by digits and synthetic')
    image_size: int | None = Field(None, gt=0, le=L.MAX_IMAGE_SIDE, description='image side in pixels: synthetic images; imagenet/ffcv_imagenet crop side (training too, unless min_res is set)' + _at_most(L.MAX_IMAGE_SIDE))
    eval_image_size: int | None = Field(None, gt=0, le=L.MAX_IMAGE_SIDE, description='imagenet: pixels of the shorter side before the centre crop at evaluation (default image_size * 8/7)' + _at_most(L.MAX_IMAGE_SIDE))
    num_classes: int | None = Field(None, ge=2, le=L.MAX_CLASSES, description='number of classes: required by synthetic; imagenet checks it against the folder' + _at_most(L.MAX_CLASSES))
    num_train: int | None = Field(None, gt=0, le=L.MAX_EXAMPLES, description='training examples: the size of synthetic data; elsewhere a fixed subset (seeded by data.seed); null: all' + _at_most(L.MAX_EXAMPLES))
    num_test: int | None = Field(None, gt=0, le=L.MAX_EXAMPLES, description='test examples, as num_train' + _at_most(L.MAX_EXAMPLES))
    channels: int = Field(3, gt=0, le=L.MAX_CHANNELS, description='image channels of synthetic data' + _at_most(L.MAX_CHANNELS))
    seed: Seed = Field(0, description='seed of the data set itself (synthetic generation, subsets), not of the data order' + _SEED_RANGE)
    augment: bool = Field(True, description="the data set's standard augmentation on training batches (CIFAR: pad-4 crop and flip)")
    # Progressive resizing (ImageNet-shaped data): training side from min_res to max_res over
    # epochs start_ramp_epoch..end_ramp_epoch (trainers/data/resolution.py checks the rest).
    min_res: int | None = Field(None, gt=0, le=L.MAX_IMAGE_SIDE, description='progressive resizing: training side in pixels up to start_ramp_epoch; null: train at image_size' + _at_most(L.MAX_IMAGE_SIDE))
    max_res: int | None = Field(None, gt=0, le=L.MAX_IMAGE_SIDE, description='progressive resizing: training side in pixels from end_ramp_epoch on' + _at_most(L.MAX_IMAGE_SIDE))
    start_ramp_epoch: int = Field(0, ge=0, le=L.MAX_EPOCHS, description='progressive resizing: epoch at which the side starts growing from min_res' + _at_most(L.MAX_EPOCHS))
    end_ramp_epoch: int = Field(0, ge=0, le=L.MAX_EPOCHS, description='progressive resizing: epoch at which the side reaches max_res' + _at_most(L.MAX_EPOCHS))

    def to_config(self) -> DataConfig:
        return DataConfig(**self.model_dump())

"""What a hand-captured CUDA graph (`train.cuda_graphs`, trainers/graphed.py) may be combined
with. Torch-free, so the spec refuses a combination before anything is planned, with the very
message the trainer gives a job that reaches it some other way.

- Streamed data (`STREAMED_DATA`: JPEG folders, FFCV's ImageNet loader) is refused. Its producer
  thread decodes, allocates and synchronises on the GPU while the training thread captures;
  capture empties the allocator's cache first, so the producer's next allocation is a real
  cudaMalloc, which invalidates a capture in the default (global) error mode. The graphed step
  exists for small models, whose data is device-resident (cifar, ffcv_cifar, synthetic,
  digits): there no other thread touches the GPU, and capture stays in the strict global mode.
- `torch.compile` is refused: a compiled model inside a hand-captured graph is untested (guards,
  recompiles and Inductor's own graph trees all assume they own the capture). Compile's own
  graph mode (`mode="reduce-overhead"`) is the alternative when compiling; `train.compile: auto`
  resolves to eager when cuda_graphs is on (orchestrator/spec/experiment.py).
- Progressive resizing is supported: the step keeps one graph per input shape and captures
  again when the side changes at an epoch boundary (trainers/graphed.py).
- A job on several ranks (DDP) is refused by the spec (its collectives cannot be captured).
"""
from __future__ import annotations

STREAMED_DATA = ("imagenet", "ffcv_imagenet")


def cuda_graphs_problem(data_name: str, compile: bool) -> tuple[str, str] | None:
    """(field, reason) when a CUDA-graphed step cannot train this configuration, else None."""
    if data_name in STREAMED_DATA:
        return ("train.cuda_graphs", f"CUDA graphs cannot be combined with streamed data (data.name {data_name!r}: a "
                "producer thread decodes on the GPU while the step is captured); use device-resident data "
                "(cifar10, cifar100, ffcv_cifar, synthetic, digits) or cuda_graphs: false")
    if compile:
        return ("train.compile", "torch.compile cannot run inside a hand-captured CUDA graph (train.cuda_graphs: true); "
                "set compile: false (or auto), or cuda_graphs: false to compile")
    return None

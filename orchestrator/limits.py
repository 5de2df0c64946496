"""The bounds on what a config may ask for, and on how much of a bad value a message repeats.

A count past these is a typo or an attack, not a sweep: `train.iterations: 1e18` would start a
run that never ends, a million replicates a plan that never finishes, a 300-character name a
file name the filesystem refuses. Each bound is far beyond what a lottery-ticket sweep has
used (the largest published ones: ImageNet for 90 epochs, about 450,000 iterations; 30 pruning
levels; 5 replicates) and is stated in the field's description (docs/config-reference.md) and
in the message that refuses it.
"""
from __future__ import annotations

# A directory and file-name component in the store (locks/NAME.lock, experiments/NAME/): file
# systems refuse names past 255 bytes.
MAX_NAME_LENGTH = 100

MAX_ITERATIONS = 100_000_000  # SGD steps of one training run (ImageNet, 90 epochs: ~450,000)
MAX_BATCH_SIZE = 1_048_576  # 2^20 examples a step (the largest large-batch ImageNet runs: 64k)
MAX_EXAMPLES = 1_000_000_000  # examples of a data set or of a subset of one (ImageNet-21k: 14 million)
MAX_IMAGE_SIDE = 8192  # pixels
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 64
MAX_EPOCHS = 1_000_000  # progressive-resizing ramp epochs (a run is bounded by MAX_ITERATIONS anyway)
MAX_LEVELS = 100  # pruning levels: 0.8^100 leaves 2e-10 of the weights
MAX_REPLICATES = 1000  # initialisations (init seeds)
MAX_REWIND_POINTS = 100
MAX_BRANCH_SEEDS = 100  # children at each branch point: their pairs grow as the square
MAX_BN_BATCHES = 100_000  # training batches of one BatchNorm reset
MAX_SCORING_EXAMPLES = 100_000  # pruning at init: examples of each class in the scoring batch (GraSP, SNIP: 10)
MAX_SYNFLOW_ROUNDS = 100_000  # pruning at init: SynFlow's rounds (Tanaka et al.: 100)
MAX_EARLY_BIRD_QUEUE = 10_000  # early-bird: masks in the detector's FIFO (one per epoch; You et al.: 5)
MAX_ATTEMPTS = 100
MAX_WORKERS = 100_000
MAX_PACK = 1024
MAX_RANKS = 4096  # processes of one job (resources.ranks)
MAX_RESOURCE = 1_000_000.0  # GPUs, CPUs or GB of memory per job
# a checkpoint interval, a gang's timeout (torch keeps it as a timedelta: 1e300 s overflows it)
MAX_SECONDS = 86_400.0 * 365
MAX_JOBS = 100_000  # jobs of one plan (the largest sweeps above plan a few tens of thousands)

# Seeds feed torch.manual_seed and a 64-bit mix (trainers/data/order.py): past int64 torch
# refuses them and the mix would alias two seeds to one stream.
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1

# How much of a value a message repeats: a message must stay a line, whatever the input.
MAX_ECHO = 80
MAX_MESSAGE = 2000


def echo(value: object) -> str:
    """repr(value), cut to MAX_ECHO characters with the length it had."""
    try:
        text = repr(value)
    except RecursionError:  # a self-containing value
        return f"<{type(value).__name__} that contains itself>"
    if len(text) <= MAX_ECHO:
        return text
    # the value's own length: a string's quotes and escapes are repr's, not the user's
    length = len(value) if isinstance(value, str) else len(text)
    return f"{text[:MAX_ECHO]}... ({length:,} characters)"


def clip(message: str) -> str:
    """A message cut to MAX_MESSAGE characters (the last resort behind echo())."""
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[:MAX_MESSAGE]}... ({len(message):,} characters)"

# A config's YAML, as a tree with every alias expanded: a real config has a few hundred nodes,
# nested five deep. A 1 KB file of nested aliases ("billion laughs") expands to 10^9 nodes, and
# a deeply nested one overflows the recursion of every reader after the parser.
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 64

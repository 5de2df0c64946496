"""Data sets. Imports go one way: catalog.py (what each one is from its config: shapes, layouts,
paths; no torch) <- the file readers and loaders (cifar_files, imagenet, ffcv_io, ...) <-
ondisk.py (`describe`, `check_available`: the true counts from the files; no torch for CIFAR) <-
sources.py (the registry of loaders, `open_data`) <- beton_writer.py (`lth-beton`). The package
imports nothing itself, so `import trainers.data.catalog` stays free of torch."""

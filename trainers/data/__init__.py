"""Data sets: what each one is (catalog.py, no torch: the planner's view) and how it is loaded
(sources.py: the registry of loaders, `open_data`, `check_available`). The package imports
nothing itself, so `import trainers.data.catalog` stays free of torch."""

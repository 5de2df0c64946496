"""Plans and schedules sweeps: spec, planner, Ray scheduler, store, tracking, analysis, CLI."""

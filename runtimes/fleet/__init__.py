"""The fleet: a device's models folder and what changes it. `deploy` and `rollback` switch `MODELS_DIR/current`
only to a bundle that passed its checks; `follow` serves whatever `current` is; `models_folder` keeps its state,
history and log. It may import the bundle format, the backends and the core; nothing outside the front door
(`runtimes/__init__`) and the command line imports it."""

"""What the package ships beside its code: the trained model (model/), the
demo clip with its labels (demo.mp4, demo.csv) and the model card.

This folder installs as `obs_merlb.assets` (pyproject `package-dir`); a
regular package, so `importlib.resources` finds it the same way in a wheel
and in an editable install. Look files up with
`obs_merlb.registry.shipped_path`, never by a path relative to the repo.
"""

"""Site customisation points of the medad MONAI Label app (the logic lives in :mod:`medad.label`)."""

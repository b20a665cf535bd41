from .volume import VolumeResult, VolumeRunner

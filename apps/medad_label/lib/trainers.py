"""The reviewer-loop train task of this app. Override methods here to customise a site's deployment."""

from medad.label.train_task import NormalBankTrainTask


class NormalBank(NormalBankTrainTask):
    """Adds reviewer-confirmed normal studies to the memory bank (see :mod:`medad.label.train_task`)."""

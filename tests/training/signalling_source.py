"""A toy source that interrupts its own process, for the checkpoint-on-interrupt tests."""

import os
import signal

from saekit.toy import ToySource


class SignallingSource(ToySource):
    """Sends this process SIGINT while reading batch ``at``, as a Ctrl-C reaching it would."""

    def __init__(self, *args, at, **kw):
        super().__init__(*args, **kw)
        self.at = at

    def next_batch(self):
        if self.position == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().next_batch()

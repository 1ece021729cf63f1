"""SIGTERM during training: a flag that every worker's next step shares.

Owns: the SIGTERM handler of a training process (install, take back from
TensorFlow, uninstall), and the rule that a second SIGTERM while stuck exits at
once with the retryable code.
Never touches: TensorFlow (the loop sends the flag through its all-reduce),
checkpoints, the run directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from job.errors import RetryableError


class Preempted(RetryableError):
    """SIGTERM reached a worker; the group saved a checkpoint and stops to be restarted."""


class PreemptionFlag:
    """SIGTERM sets a flag that the next training step shares with every worker.

    The flag rides in each step's all-reduce, so all workers see it at the same
    step, save the same checkpoint and exit with the retryable code: the
    PreemptionCheckpointHandler protocol, without its private-dir writes on
    shared storage. A second SIGTERM exits at once.
    """

    def __init__(self) -> None:
        self.set = False
        self.previous = None
        self._saving = False

    @classmethod
    def install(cls) -> PreemptionFlag:
        flag = cls()
        try:
            flag.previous = signal.signal(signal.SIGTERM, flag._handle)
        except ValueError:
            flag.previous = None  # Not the main thread (tests): no handler, no flag.
        return flag

    def reinstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.set and not self._saving:
            # A second SIGTERM while stuck (say, on a lost peer): leave now.
            os._exit(RetryableError.exit_code)
        if self.set:
            return  # Saving the preemption checkpoint: finish it, then exit.
        self.set = True
        print("trainjob: SIGTERM received: saving a checkpoint after this step",
              file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def saving(self):
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def raise_if_set(self) -> None:
        if self.set:
            raise Preempted("preempted (SIGTERM) before training started; nothing to save; "
                            "restart to run")

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

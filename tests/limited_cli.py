"""Run invert commands in this process under a file-size limit (RLIMIT_FSIZE), for tests/test_write_failures.py:
the limit is set here, in a subprocess, so that the test process itself is never limited.

stdin: a JSON list of cases, each ``{"args": [...], "limit": bytes, "stop_at": step or null}`` (``stop_at``: a
SIGTERM arrives at that fit step, as Ctrl-C would, so that the fit writes its state). stdout: a JSON list of
``{"exit_code", "output", "escaped"}``, ``escaped`` being the traceback of an exception that left the command
(none should). Python ignores SIGXFSZ, so a write past the limit fails with EFBIG ("File too large"), as on a
full disk."""
import json
import os
import resource
import signal
import sys
import traceback

from click.testing import CliRunner


def run(case: dict) -> dict:
    from invert.cli.main import cli
    from invert.fitting.loop import Trainer

    original = Trainer.step_loss
    if case.get("stop_at") is not None:
        def step_loss(self, step, scale):
            if step == case["stop_at"]:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, step, scale)

        Trainer.step_loss = step_loss
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (case["limit"], hard))
    try:
        r = CliRunner().invoke(cli, case["args"], catch_exceptions=False)
        return {"exit_code": r.exit_code, "output": r.output, "escaped": None}
    except BaseException:  # noqa: B036 (a SystemExit or KeyboardInterrupt escaping is as wrong as any error)
        return {"exit_code": None, "output": "", "escaped": traceback.format_exc()}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        Trainer.step_loss = original


if __name__ == "__main__":
    cases = json.load(sys.stdin)
    print(json.dumps([run(case) for case in cases]))

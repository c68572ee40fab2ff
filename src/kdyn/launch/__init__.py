"""What the entry points run between composing a config and writing its result (the run layer).

- :mod:`kdyn.launch.common`: the steps every entry point shares — validate/seed/threads, load the
  checkpoint (building model=tiny on first use), the device, the timed measurement, the result file;
- :mod:`kdyn.launch.job`: the training job around ``Trainer.fit`` — :func:`build_train_job` (everything
  before ``fit``), :func:`write_run_record`, :func:`collect_results` (``results.json`` + summary);
- :mod:`kdyn.launch.trainer`: what needs the Trainer — :func:`check_launch`, :func:`fit_stream` (run
  length, injection plan), :func:`checkpoint_step` / :func:`resume_loggers` (resume), and after a
  SIGTERM :func:`interrupted_section` / :func:`requeue_and_exit`.
"""

from kdyn.launch.common import begin, load_checkpoint, measuring, on_device, write_result
from kdyn.launch.job import TrainJob, build_train_job, collect_results, write_run_record
from kdyn.launch.trainer import (
    check_launch,
    checkpoint_step,
    fit_stream,
    interrupted_section,
    requeue_and_exit,
    resume_loggers,
)

__all__ = ["TrainJob", "begin", "build_train_job", "check_launch", "checkpoint_step", "collect_results", "fit_stream",
           "interrupted_section", "load_checkpoint", "measuring", "on_device", "requeue_and_exit", "resume_loggers",
           "write_result", "write_run_record"]

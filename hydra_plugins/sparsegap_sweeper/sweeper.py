"""Hydra's basic sweeper, except that every job of a multirun gets its chance to run.

Hydra's ``BasicSweeper`` composes every job of a batch before launching any, so one swept value
that does not compose (``-m data.N=16,abc,32``: a wrong type, a key or group option that does not
exist) stops the whole sweep; and it raises the first failed job's error once a batch is done,
which stops the batches after it. Here a job that does not compose is recorded as a failed job
instead: its own folder (where the launcher would have put it) gets the failed ``summary.json``
with the one-line reason, and ``.hydra/overrides.yaml``, as any job that failed before its first
step; its ``error:`` line is printed in its turn. The jobs that compose run through the
configured launcher (basic, joblib, submitit), each stretch of consecutive ones as one launch, so
that every job keeps its number. Once every job has run, a sweep with a failed job ends with exit
code 1: after the traceback of the first failure that printed no ``error:`` line of its own (as
Hydra's sweeper prints it), else silently.

Hydra instantiates only plugins under the ``hydra_plugins`` namespace, which it finds by scanning
that namespace; an editable install of sparsegap hides this package from the scan, so the entry
point also registers it by hand (``sparsegap.__main__``).
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

# Light imports only: Hydra imports this module in every Hydra application of the environment
# when it scans for plugins (sparsegap.precheck, which imports the encoders, is imported late).
from sparsegap.errors import ConfigError, RunRefused
from sparsegap.tracking import Tracker

# Failures whose job printed its one error: line (sparsegap.runtime.run_entry_point) and wrote
# its reason into its folder: no traceback to add.
_EXPLAINED = (ConfigError, RunRefused)


class SparsegapSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[Sequence[JobReturn]] = []
        number = 0  # of the next job
        while not self.is_done():
            batch = [list(job) for job in self.get_job_batch()]
            results: list[JobReturn] = []
            problems = [self._problem(job) for job in batch]
            for composes, group in itertools.groupby(
                zip(batch, problems, strict=True), key=lambda pair: pair[1] is None
            ):
                pairs = list(group)
                if composes:
                    jobs = [job for job, _ in pairs]
                    results.extend(self.launcher.launch(jobs, initial_job_idx=number))
                else:
                    results.extend(
                        self._record(job, problem, number + offset)
                        for offset, (job, problem) in enumerate(pairs)
                    )
                number += len(pairs)
            returns.append(results)

        failed = [r for batch in returns for r in batch if r.status == JobStatus.FAILED]
        unexplained = [r for r in failed if not isinstance(r._return_value, _EXPLAINED)]
        if unexplained:
            _ = unexplained[0].return_value  # raises it: Hydra prints it and exits with 1
        if failed:  # not an exception: Hydra would print it with a traceback
            raise SystemExit(1)
        return returns

    def _problem(self, job: list[str]) -> ConfigError | None:
        """Why ``job`` does not compose (one line), or None when it does."""
        from sparsegap.precheck import composition_error

        assert self.hydra_context is not None and self.config is not None
        try:
            self.hydra_context.config_loader.load_sweep_config(self.config, job)
        except (HydraException, OmegaConfBaseException) as error:
            return composition_error(error, job)
        return None

    def _record(self, job: list[str], problem: ConfigError, number: int) -> JobReturn:
        """Record ``job`` as failed for ``problem`` in the folder the launcher would give it."""
        assert self.config is not None
        print(f"error: {problem}", file=sys.stderr)
        config = copy.deepcopy(self.config)
        OmegaConf.copy_cache(from_config=self.config, to_config=config)  # the same ${now:...}
        with open_dict(config):
            config.hydra.job.num = config.hydra.job.id = number
        folder = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        result = JobReturn(overrides=job, working_dir=str(folder), status=JobStatus.FAILED)
        result.return_value = problem
        try:
            files = {".hydra/overrides.yaml": OmegaConf.to_yaml(job)}
            Tracker(folder, {}, files=files).finish(problem)
        except RunRefused as refused:  # the folder is another live run's: left alone
            print(f"error: {refused}", file=sys.stderr)
            result.return_value = refused
        return result

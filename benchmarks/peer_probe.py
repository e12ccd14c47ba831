"""The probe's rows of `benchmarks.peers`: gradprobe's Lightning callback on any network, into an in-memory sink."""

from __future__ import annotations

from benchmarks import peer_rows as R
from benchmarks.peer_workloads import Workload


class CountingSink:
    """A sink that keeps nothing but the count of per-layer values it was given."""

    def __init__(self) -> None:
        self.values = 0

    def __call__(self, step: int, keys: list[str], values: list[float]) -> None:  # noqa: D102
        self.values += len(values)


def probe_row(log_every: int):
    """A row function: the probe at `log_every`, recording into a CountingSink."""

    def run(workload: Workload, plan: R.Plan) -> R.Outcome:
        try:
            from gradprobe import GradientProbe
        except ImportError as e:
            raise R.CannotRun(f"gradprobe.GradientProbe for any network is not available here ({e})") from e
        sink = CountingSink()
        probe = GradientProbe(sink=sink, log_every=log_every)
        step_s, _ = R.fit(R.Lit(workload.model()), workload, plan, [probe])
        return R.Outcome(step_s, R.Counts(layer_scalars=sink.values), plan.max_steps)

    run.__doc__ = f"The probe at log_every={log_every}."
    return run


ROWS = [
    R.Row("probe1", "probe, log_every=1", ("gradprobe",), probe_row(1)),
    R.Row("probe10", "probe, log_every=10", ("gradprobe",), probe_row(10)),
]

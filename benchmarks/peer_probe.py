"""The probe's rows of `benchmarks.peers`: gradprobe's Lightning callback on any network, into an in-memory sink."""

from __future__ import annotations

from pathlib import Path

from benchmarks import peer_rows as R
from benchmarks.peer_workloads import Workload
from gradprobe import keys as K


class CountingSink:
    """An in-memory sink: counts the per-layer and run-wide values it is given, keeps the first record's keys."""

    def __init__(self) -> None:
        self.layer_values = self.global_values = 0
        self.first_keys: list[str] | None = None
        self._layer_keys: dict[int, int] = {}  # per-layer keys in a record of this length: parsed once per kind of step

    def __call__(self, step: int, keys: list[str], values: list[float]) -> None:
        if self.first_keys is None:
            self.first_keys = keys
        layer = self._layer_keys.get(len(keys))
        if layer is None:
            layer = self._layer_keys[len(keys)] = sum(map(K.per_layer, keys))
        self.layer_values += layer
        self.global_values += len(keys) - layer

    def outcome(self, step_s: float, plan: R.Plan) -> R.Outcome:
        """The row's result: seconds per step and what was recorded."""
        counts = R.Counts(layer_scalars=self.layer_values, global_numbers=self.global_values)
        return R.Outcome(step_s, counts, plan.max_steps, keys=self.first_keys)


def probe_row(log_every: int):
    """A row function: the probe at `log_every`, recording into a CountingSink."""

    def run(workload: Workload, plan: R.Plan) -> R.Outcome:
        try:
            from gradprobe import GradientProbe
        except ImportError as e:
            raise R.CannotRun(f"gradprobe.GradientProbe for any network is not available here ({e})") from e
        sink = CountingSink()
        step_s, _ = R.fit(R.Lit(workload.model()), workload, plan, [GradientProbe(sink=sink, log_every=log_every)])
        return sink.outcome(step_s, plan)

    run.__doc__ = f"The probe at log_every={log_every}."
    return run


class MlflowSink(CountingSink):
    """The lab's MLflow recorder (a temporary SQLite store) behind the counting sink."""

    def __init__(self, tmp: Path, expected_records: int) -> None:
        from mlflow.tracking import MlflowClient

        from gradprobe.recorder import Recorder

        super().__init__()
        client = MlflowClient(f"sqlite:///{tmp / 'probe-mlflow.db'}")
        name = "peers-probe"
        found = client.get_experiment_by_name(name)
        experiment = (
            found.experiment_id if found else client.create_experiment(name, (tmp / "probe-artifacts").as_uri())
        )
        run = client.create_run(experiment)
        self.recorder = Recorder(client, run.info.run_id, expected_records=expected_records, metric_points=200)

    def __call__(self, step: int, keys: list[str], values: list[float]) -> None:
        super().__call__(step, keys, values)
        self.recorder.record(step, keys, values)


def probe_mlflow_row(workload: Workload, plan: R.Plan) -> R.Outcome:
    """The probe at log_every=10 into the lab's MLflow recorder; its closing flush (parquet, per-layer keys) untimed."""
    from gradprobe import GradientProbe

    sink = MlflowSink(plan.tmp, expected_records=plan.max_steps // 10 + 2)
    try:
        step_s, _ = R.fit(R.Lit(workload.model()), workload, plan, [GradientProbe(sink=sink, log_every=10)])
    finally:
        sink.recorder.close()
    return sink.outcome(step_s, plan)


ROWS = [
    R.Row("probe1", "probe, log_every=1", ("gradprobe",), probe_row(1)),
    R.Row("probe10", "probe, log_every=10", ("gradprobe",), probe_row(10)),
    R.Row("probe10_mlflow", "probe, log_every=10, MLflow recorder", ("gradprobe", "mlflow"), probe_mlflow_row),
]

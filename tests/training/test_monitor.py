import io
import json

import pytest

from saekit.training.monitor import MetricsLog, Progress, read_metrics


def test_jsonl_log_drops_steps_after_the_resumed_checkpoint(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3, 4):
        log.log(step, {"fvu": 1.0 / step})
    log.close()
    log = MetricsLog(tmp_path, resume_step=2)
    log.log(3, {"fvu": 0.5})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["fvu"] == 0.5


def test_unknown_or_missing_logger_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown logger 'mlflow'"):
        MetricsLog(tmp_path, loggers=("jsonl", "mlflow"))


def test_plain_progress_prints_tokens_per_second_and_metrics():
    stream = io.StringIO()
    progress = Progress(20, stream=stream)
    for _ in range(20):
        progress.update(1, 100, {"fvu": 0.25})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and "tok/s=" in lines[-1] and "fvu=0.25" in lines[-1] and "20/20" in lines[-1]
